//! Layouts shared by several writers at once: every tag survives, a new
//! layout appears whole to every creator, and a blob copied out of a layout
//! is a file of its own, checked on the way.

use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Barrier};

use oci_image::{Layout, LayoutError, Reference};

use super::small_image;

#[test]
fn concurrent_writers_never_lose_a_tag() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("layout");
    let layout = Layout::create(&root).unwrap();
    let (manifest, _) = small_image(&layout, "example.com/app:seed");
    let (threads, per_thread) = (8, 10);
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (root, manifest, start) = (root.clone(), manifest.clone(), Arc::clone(&start));
            std::thread::spawn(move || {
                // each writer opens the layout itself, as separate processes do
                let layout = Layout::open(&root).unwrap();
                start.wait();
                for n in 0..per_thread {
                    let name: Reference = format!("example.com/app:t{t}-{n}").parse().unwrap();
                    layout.set_tag(&name, manifest.clone()).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let tags = layout.tags().unwrap();
    assert_eq!(tags.len(), 1 + threads * per_thread, "tags were lost: {tags:?}");
    layout.verify().unwrap();
}

#[test]
fn concurrent_creators_all_open_the_same_whole_layout() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20 {
        let root = dir.path().join(format!("layout-{round}"));
        let start = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (root, start) = (root.clone(), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    Layout::create(&root).map(|l| l.index().map(|i| i.manifests.len()))
                })
            })
            .collect();
        for h in handles {
            let opened = h.join().unwrap();
            assert!(matches!(opened, Ok(Ok(0))), "round {round}: {opened:?}");
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "staging directories left behind: {leftovers:?}");
    }
    // an empty directory becomes a layout and keeps its mode; anything else is refused
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::set_permissions(&empty, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    Layout::create(&empty).unwrap();
    assert_eq!(std::fs::metadata(&empty).unwrap().mode() & 0o777, 0o700);
    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("other"), "x").unwrap();
    assert!(matches!(Layout::create(&full), Err(LayoutError::NotALayout { .. })));
}

#[test]
fn a_copied_blob_is_a_file_of_its_own_checked_on_the_way() {
    let dir = tempfile::tempdir().unwrap();
    let from = Layout::create(dir.path().join("from")).unwrap();
    let (manifest, layer) = small_image(&from, "example.com/app:v1");
    let into = Layout::create(dir.path().join("into")).unwrap();
    let oci_image::AnyManifest::Image(m) = from.read_manifest(&manifest).unwrap() else { panic!() };
    let desc = m.value().layers[0].clone();
    from.copy_blob_to(&desc, &into).unwrap();
    let (a, b) = (from.blob_path(&layer), into.blob_path(&layer));
    assert_ne!(std::fs::metadata(&a).unwrap().ino(), std::fs::metadata(&b).unwrap().ino());
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // a corrupt source is refused, naming the source layout, and nothing lands
    let config = m.value().config.clone();
    let mut bytes = std::fs::read(from.blob_path(&config.digest)).unwrap();
    bytes[0] ^= 0x20;
    std::fs::write(from.blob_path(&config.digest), bytes).unwrap();
    let e = from.copy_blob_to(&config, &into).unwrap_err();
    assert!(matches!(&e, LayoutError::Verify { path, .. } if path == from.root()), "{e:?}");
    assert!(!into.has_blob(&config.digest));
    let temps = std::fs::read_dir(into.root().join("blobs"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".tmp"));
    assert_eq!(temps.count(), 0);
}
