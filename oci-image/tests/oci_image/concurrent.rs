//! Layouts shared by several writers at once: every tag survives, a new
//! layout appears whole to every creator, and a blob copied out of a layout
//! is a file of its own, checked on the way.

use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Barrier};

use oci_image::{Descriptor, Digest, Layout, LayoutError, MediaType, Reference};

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

/// `data` written into `layout` with a second copy in `dir`, as the layer
/// pipeline writes a layer: (its digest, the copy).
fn blob_with_copy(layout: &Layout, dir: &std::path::Path, data: &[u8]) -> (Digest, Option<oci_image::BlobCopy>) {
    use std::io::Write;
    let mut w = layout.dangerous_unhashed_blob_writer().unwrap();
    assert!(w.copy_into(dir));
    for chunk in data.chunks(100_000) {
        w.write_all(chunk).unwrap();
    }
    // the copy must start with the blob's first byte
    assert!(!w.copy_into(dir));
    let digest = Digest::sha256(data);
    let (info, copy) = w.dangerous_finish_with_copy(&digest).unwrap();
    assert_eq!((info.digest.clone(), info.size), (digest.clone(), data.len() as u64));
    (digest, copy)
}

#[test]
fn a_copy_written_beside_a_blob_is_placed_by_a_link_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let from = Layout::create(dir.path().join("from")).unwrap();
    let data: Vec<u8> = (0..1_000_003u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let (digest, copy) = blob_with_copy(&from, dir.path(), &data);
    let copy = copy.expect("a copy on a file system with O_TMPFILE");
    assert_eq!((copy.digest(), copy.size()), (&digest, data.len() as u64));
    // the copy has no name: nothing new beside the layout
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("from")]);
    let into = Layout::create(dir.path().join("into")).unwrap();
    assert!(into.place_copy(copy).unwrap());
    let (a, b) = (from.blob_path(&digest), into.blob_path(&digest));
    assert_eq!(std::fs::read(&b).unwrap(), data);
    let (ma, mb) = (std::fs::metadata(&a).unwrap(), std::fs::metadata(&b).unwrap());
    // its own file: not the first layout's inode, and named once
    assert_ne!(ma.ino(), mb.ino());
    assert_eq!(mb.nlink(), 1);
    assert_eq!(ma.mode() & 0o777, mb.mode() & 0o777);
    // the placed blob is a blob like any other: it copies out checked
    let third = Layout::create(dir.path().join("third")).unwrap();
    let desc = Descriptor::new(MediaType::OciLayerGzip, digest.clone(), data.len() as u64);
    into.copy_blob_to(&desc, &third).unwrap();
    assert_eq!(std::fs::read(third.blob_path(&digest)).unwrap(), data);
}

#[test]
fn a_copy_cannot_be_placed_on_another_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let shm = std::path::Path::new("/dev/shm");
    let other_fs = std::fs::metadata(shm).is_ok_and(|m| m.dev() != std::fs::metadata(dir.path()).unwrap().dev());
    if !other_fs {
        eprintln!("skipped: no /dev/shm on another file system than {}", dir.path().display());
        return;
    }
    let from = Layout::create(dir.path().join("from")).unwrap();
    let (digest, copy) = blob_with_copy(&from, dir.path(), b"not to be linked across file systems");
    let there = tempfile::tempdir_in(shm).unwrap();
    let into = Layout::create(there.path().join("into")).unwrap();
    // refused, so that the caller copies: nothing is put in place
    assert!(!into.place_copy(copy.unwrap()).unwrap());
    assert!(!into.has_blob(&digest));
    let desc = Descriptor::new(MediaType::OciLayerGzip, digest.clone(), 36);
    from.copy_blob_to(&desc, &into).unwrap();
    assert!(into.has_blob(&digest));
}

#[test]
fn blobs_synced_behind_their_writing_are_whole_through_every_writer() {
    use std::io::Write;
    // over twice the size after which a helper starts syncing while the
    // writer goes on: each writer ends with the whole blob, and returns
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::create(dir.path().join("l")).unwrap();
    let data: Vec<u8> = (0..40_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let digest = Digest::sha256(&data);
    let mut w = layout.blob_writer().unwrap();
    for chunk in data.chunks(1 << 20) {
        w.write_all(chunk).unwrap();
    }
    assert_eq!(w.finish().unwrap().digest, digest);
    let other = Layout::create(dir.path().join("other")).unwrap();
    other.write_blob(data.as_slice(), Some((&digest, data.len() as u64))).unwrap();
    let (unhashed, copy) = blob_with_copy(&Layout::create(dir.path().join("third")).unwrap(), dir.path(), &data);
    assert_eq!(unhashed, digest);
    let fourth = Layout::create(dir.path().join("fourth")).unwrap();
    assert!(fourth.place_copy(copy.unwrap()).unwrap());
    let desc = Descriptor::new(MediaType::OciLayerGzip, digest.clone(), data.len() as u64);
    let fifth = Layout::create(dir.path().join("fifth")).unwrap();
    layout.copy_blob_to(&desc, &fifth).unwrap();
    for l in [&layout, &other, &fourth, &fifth] {
        assert_eq!(std::fs::read(l.blob_path(&digest)).unwrap(), data, "{}", l.root().display());
    }
}
