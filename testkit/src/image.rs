//! Base-image fixtures made without kiln: umoci builds an image from the
//! static `busybox` binary of Debian's `busybox-static` (with its applet
//! links), so kiln's builds start from something it did not make.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{run, tool};

/// The users and groups of [`busybox_image`].
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n";
/// The groups of [`busybox_image`].
pub const GROUP: &str = "root:x:0:\napp:x:1000:\nstaff:x:50:app\n";

/// Makes a busybox image tagged `tag` in the OCI layout `layout` (created
/// when missing) with umoci: `/bin/busybox` and its applets, `/etc/passwd`
/// ([`PASSWD`]), `/etc/group` ([`GROUP`]), `/tmp` (1777), `/home/app`
/// owned by 1000:1000, and `/var/lib/junk/{a,b}` for builds to delete.
/// Config: `PATH`, `Cmd ["/bin/sh"]`. Returns `None` when umoci or busybox
/// is missing outside CI.
///
/// # Errors
/// When a tool fails.
pub fn busybox_image(layout: &Path, tag: &str) -> io::Result<Option<()>> {
    let (Some(umoci), Some(busybox)) = (tool("umoci"), tool("busybox")) else { return Ok(None) };
    let work = tempfile::tempdir()?;
    let image = format!("{}:{tag}", layout.display());
    if !layout.join("index.json").exists() {
        run(Command::new(&umoci).args(["init", "--layout"]).arg(layout))?;
    }
    run(Command::new(&umoci).args(["new", "--image", &image]))?;
    let bundle = work.path().join("bundle");
    run(Command::new(&umoci).args(["unpack", "--image", &image]).arg(&bundle))?;
    let root = bundle.join("rootfs");
    for d in ["bin", "etc", "tmp", "root", "var/lib/junk", "home/app"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::copy(&busybox, root.join("bin/busybox"))?;
    // the host's copy lists the applets: running the fresh copy can race a
    // concurrent fork holding it open for writing (ETXTBSY)
    let applets = run(Command::new(&busybox).arg("--list"))?;
    for a in applets.lines().map(str::trim).filter(|a| !a.is_empty() && *a != "busybox") {
        let link: PathBuf = root.join("bin").join(a);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    std::fs::write(root.join("etc/passwd"), PASSWD)?;
    std::fs::write(root.join("etc/group"), GROUP)?;
    std::fs::write(root.join("var/lib/junk/a"), "junk a\n")?;
    std::fs::write(root.join("var/lib/junk/b"), "junk b\n")?;
    std::os::unix::fs::chown(root.join("home/app"), Some(1000), Some(1000))?;
    run(Command::new(&umoci).args(["repack", "--image", &image]).arg(&bundle))?;
    run(Command::new(&umoci).args([
        "config",
        "--image",
        &image,
        "--config.env",
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        "--config.cmd",
        "/bin/sh",
    ]))?;
    Ok(Some(()))
}
