//! The delivery pipeline against two real registries (dev and prod, each
//! with its own credentials): promotion by digest, tag collisions, dry
//! runs, multi-arch selection, referrers and release tags.

use std::process::Command;

use kiln::oci_image::{AnyManifest, Descriptor, IndexBuilder, Layout, ManifestBuilder, MediaType, Raw, Reference};
use kiln::registry_client::{Client, Credential, Repository, StaticCredentials};
use kiln::{
    CopyOptions, ImageLocation, PromoteError, PromoteOptions, copy, copy_with, image_from_dir, promote, release_tags,
};
use testkit::{Registry, RegistryOptions, run, tool};

struct Env {
    dev: Registry,
    prod: Registry,
    client: Client,
    dir: tempfile::TempDir,
}

fn env() -> Option<Env> {
    tool("docker-registry")?;
    tool("htpasswd")?;
    let auth =
        |u: &str, p: &str| RegistryOptions { basic_auth: Some((u.into(), p.into())), ..RegistryOptions::default() };
    let dev = Registry::start_with(&auth("dev-user", "dev-pass")).unwrap();
    let prod = Registry::start_with(&auth("prod-user", "prod-pass")).unwrap();
    let creds = StaticCredentials::new()
        .with(dev.host(), Credential::basic("dev-user", "dev-pass"))
        .with(prod.host(), Credential::basic("prod-user", "prod-pass"));
    let client = Client::builder().credentials(creds).build().unwrap();
    Some(Env { dev, prod, client, dir: tempfile::tempdir().unwrap() })
}

/// Builds a one-file image for a platform into the env's layout, tagged `tag`.
fn build(env: &Env, tag: &str, content: &str, platform: &str) -> Descriptor {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("app.txt"), content).unwrap();
    let mut opts = super::opts();
    opts.platform = platform.parse().unwrap();
    image_from_dir(ctx.path(), &env.dir.path().join("layout"), &format!("kiln/app:{tag}").parse().unwrap(), &opts)
        .unwrap()
        .manifest
}

async fn push(env: &Env, tag: &str, to: &str) -> Reference {
    let src: ImageLocation = format!("oci:{}:{tag}", env.dir.path().join("layout").display()).parse().unwrap();
    let dst: Reference = to.parse().unwrap();
    let r = copy(&env.client, &src, &ImageLocation::Registry(dst.clone())).await.unwrap();
    dst.repository_only().with_digest(r.digest)
}

#[tokio::test]
async fn promote_moves_the_exact_digest_and_refuses_collisions() {
    let Some(env) = env() else { return };
    let built = build(&env, "v1", "release one\n", "linux/amd64");
    let pinned = push(&env, "v1", &format!("{}/team/app:build-1", env.dev.host())).await;
    assert_eq!(pinned.digest(), Some(&built.digest));
    let prod: Reference = format!("{}/team/app:v1", env.prod.host()).parse().unwrap();

    // a dry run plans and writes nothing
    let plan = promote(&env.client, &pinned, &prod, PromoteOptions { dry_run: true, ..PromoteOptions::default() })
        .await
        .unwrap();
    assert!(plan.dry_run);
    assert_eq!(plan.plan.upload.len(), 2, "config and layer would be uploaded");
    assert!(plan.plan.upload_bytes > 0);
    assert_eq!(env.client.head_manifest(&prod).await.unwrap(), None, "dry run wrote nothing");
    assert_eq!(env.client.head_blob(&Repository::of(&prod), &plan.plan.upload[0].digest).await.unwrap(), None);

    let record = promote(&env.client, &pinned, &prod, PromoteOptions::default()).await.unwrap();
    assert_eq!(record.digest, built.digest);
    assert_eq!(env.client.head_manifest(&prod).await.unwrap().unwrap().digest, built.digest);
    let json = serde_json::to_value(&record).unwrap();
    assert_eq!(json["destination"], prod.to_string());
    // skopeo agrees, with prod's own credentials
    let skopeo = tool("skopeo").unwrap();
    let inspect = run(Command::new(&skopeo)
        .args(["inspect", "--tls-verify=false", "--creds", "prod-user:prod-pass", "--format", "{{.Digest}}"])
        .arg(format!("docker://{prod}")))
    .unwrap();
    assert_eq!(inspect.trim(), built.digest.to_string());

    // promoting the same digest again is fine; another digest onto the tag is refused
    promote(&env.client, &pinned, &prod, PromoteOptions::default()).await.unwrap();
    build(&env, "v2", "release two\n", "linux/amd64");
    let other = push(&env, "v2", &format!("{}/team/app:build-2", env.dev.host())).await;
    let e = promote(&env.client, &other, &prod, PromoteOptions::default()).await.unwrap_err();
    assert!(matches!(e, PromoteError::TagCollision { .. }), "{e}");
    assert_eq!(env.client.head_manifest(&prod).await.unwrap().unwrap().digest, built.digest, "tag untouched");
    let moved = promote(&env.client, &other, &prod, PromoteOptions { overwrite: true, ..PromoteOptions::default() })
        .await
        .unwrap();
    assert_eq!(Some(&moved.digest), other.digest());
    // a source without a digest is refused
    let e = promote(
        &env.client,
        &format!("{}/team/app:build-1", env.dev.host()).parse().unwrap(),
        &prod,
        PromoteOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, PromoteError::NotPinned { .. }), "{e}");
}

#[tokio::test]
async fn multi_arch_copies_whole_one_platform_or_a_new_index() {
    let Some(env) = env() else { return };
    let amd = build(&env, "amd", "amd64 build\n", "linux/amd64");
    let arm = build(&env, "arm", "arm64 build\n", "linux/arm64/v8");
    let armv7 = build(&env, "armv7", "armv7 build\n", "linux/arm/v7");
    let layout = Layout::open(env.dir.path().join("layout")).unwrap();
    let index = Raw::new(
        IndexBuilder::new()
            .manifest(amd.clone().with_platform("linux/amd64".parse().unwrap()))
            .manifest(arm.clone().with_platform("linux/arm64/v8".parse().unwrap()))
            .manifest(armv7.with_platform("linux/arm/v7".parse().unwrap()))
            .build(),
    );
    layout.write_blob_bytes(index.bytes()).unwrap();
    layout.set_tag(&"kiln/app:multi".parse().unwrap(), index.descriptor()).unwrap();
    let src = push(&env, "multi", &format!("{}/team/multi:v1", env.dev.host())).await;
    assert_eq!(src.digest(), Some(index.digest()));
    let src = ImageLocation::Registry(src);
    let to = |name: &str| -> ImageLocation { format!("{}/team/{name}:v1", env.prod.host()).parse().unwrap() };
    let whole = copy_with(&env.client, &src, &to("whole"), &CopyOptions::default()).await.unwrap();
    assert_eq!(&whole.digest, index.digest());
    let one = copy_with(
        &env.client,
        &src,
        &to("arm"),
        &CopyOptions { platforms: vec!["linux/arm64".parse().unwrap()], ..CopyOptions::default() },
    )
    .await
    .unwrap();
    assert_eq!((one.digest.clone(), one.new_index), (arm.digest.clone(), false));
    let both = CopyOptions {
        platforms: vec!["linux/amd64".parse().unwrap(), "linux/arm64".parse().unwrap()],
        ..CopyOptions::default()
    };
    let two = copy_with(&env.client, &src, &to("both"), &both).await.unwrap();
    assert!(two.new_index);
    assert_ne!(&two.digest, index.digest(), "two of three platforms: a new index, a new digest");
    let ImageLocation::Registry(both_ref) = to("both") else { unreachable!() };
    let AnyManifest::Index(got) = env.client.get_manifest(&both_ref).await.unwrap() else { panic!("an index") };
    assert_eq!(got.digest(), &two.digest);
    let digests: Vec<_> = got.value().manifests.iter().map(|d| d.digest.clone()).collect();
    assert_eq!(digests, [amd.digest, arm.digest]);
    let e = copy_with(
        &env.client,
        &src,
        &to("none"),
        &CopyOptions { platforms: vec!["linux/s390x".parse().unwrap()], ..CopyOptions::default() },
    )
    .await
    .unwrap_err();
    assert!(format!("{e:?}").contains("s390x"), "{e:?}");
}

#[tokio::test]
async fn referrers_travel_with_the_image() {
    let Some(env) = env() else { return };
    build(&env, "v1", "signed\n", "linux/amd64");
    let pinned = push(&env, "v1", &format!("{}/team/signed:v1", env.dev.host())).await;
    let subject = env.client.head_manifest(&pinned).await.unwrap().unwrap();
    let repo = Repository::of(&pinned);
    env.client.push_bytes(&repo, &Descriptor::empty(), bytes::Bytes::from_static(b"{}")).await.unwrap();
    let sig = Raw::new(
        ManifestBuilder::new(Descriptor::empty())
            .artifact_type("application/vnd.example.signature".parse().unwrap())
            .layer(Descriptor::empty())
            .subject(subject)
            .build(),
    );
    env.client
        .put_manifest(
            &pinned.repository_only().with_digest(sig.digest().clone()),
            sig.bytes().clone(),
            &MediaType::OciManifest,
        )
        .await
        .unwrap();
    let dst: ImageLocation = format!("{}/team/signed:v1", env.prod.host()).parse().unwrap();
    let r = copy_with(
        &env.client,
        &ImageLocation::Registry(pinned.clone()),
        &dst,
        &CopyOptions { referrers: true, ..CopyOptions::default() },
    )
    .await
    .unwrap();
    assert_eq!(r.referrers, 1);
    let ImageLocation::Registry(dst_ref) = dst else { unreachable!() };
    let found = env.client.referrers(&dst_ref.repository_only().with_digest(r.digest), None).await.unwrap();
    assert_eq!(found.iter().map(|d| d.digest.clone()).collect::<Vec<_>>(), [sig.digest().clone()]);
}

#[tokio::test]
async fn release_tags_follow_the_rules() {
    let Some(env) = env() else { return };
    build(&env, "a", "1.2.3\n", "linux/amd64");
    let v123 = push(&env, "a", &format!("{}/team/rel:build-a", env.prod.host())).await;
    let tags = release_tags(&env.client, &v123, "v1.2.3").await.unwrap();
    assert_eq!(tags.iter().map(ToString::to_string).collect::<Vec<_>>(), ["v1.2.3", "v1.2", "v1", "latest"]);
    let at = |t: &str| {
        let r = v123.repository_only().with_tag(t.parse().unwrap());
        let c = env.client.clone();
        async move { c.head_manifest(&r).await.unwrap().map(|d| d.digest) }
    };
    for t in ["v1.2.3", "v1.2", "v1", "latest"] {
        assert_eq!(at(t).await.as_ref(), v123.digest(), "{t}");
    }
    build(&env, "b", "2.0.0-rc.1\n", "linux/amd64");
    let rc = push(&env, "b", &format!("{}/team/rel:build-b", env.prod.host())).await;
    let tags = release_tags(&env.client, &rc, "v2.0.0-rc.1").await.unwrap();
    assert_eq!(tags.iter().map(ToString::to_string).collect::<Vec<_>>(), ["v2.0.0-rc.1"]);
    assert_eq!(at("latest").await.as_ref(), v123.digest(), "a pre-release never moves latest");
    build(&env, "c", "1.1.9\n", "linux/amd64");
    let old = push(&env, "c", &format!("{}/team/rel:build-c", env.prod.host())).await;
    let tags = release_tags(&env.client, &old, "v1.1.9").await.unwrap();
    assert_eq!(tags.iter().map(ToString::to_string).collect::<Vec<_>>(), ["v1.1.9", "v1.1"]);
    for t in ["v1", "latest", "v1.2"] {
        assert_eq!(at(t).await.as_ref(), v123.digest(), "{t} did not move backwards");
    }
    // a digest that is not there is refused before any tag is written
    let ghost = v123.repository_only().with_digest(kiln::oci_image::Digest::sha256(b"never pushed"));
    let e = release_tags(&env.client, &ghost, "v9.9.9").await.unwrap_err();
    assert!(matches!(e, PromoteError::Missing { .. }), "{e}");
    assert_eq!(at("v9.9.9").await, None);
}
