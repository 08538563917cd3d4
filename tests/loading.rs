//! Loading whole models the way users keep them: a diffusers folder, a Hugging Face cache
//! id, and the errors for folders that are not a supported model.

mod common;

use std::path::Path;

use dreamwalk::model::{Engine, StableDiffusion};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn load_error(model: &str) -> String {
    match StableDiffusion::load(model, None) {
        Ok(_) => panic!("{model} should not load"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_hugging_face_id_loads_from_the_local_cache_and_bad_folders_say_why() {
    let tmp = tempfile::tempdir().unwrap();
    // The cache layout hf-hub reads: hub/models--ORG--NAME/{refs/main, snapshots/HASH/...}.
    let repo = tmp.path().join("hub/models--dreamwalk-test--tiny-sd");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    copy_dir(
        &common::fixture("tiny-sd"),
        &repo.join("snapshots/0123abcd"),
    );
    // SAFETY-free in edition 2021; this test binary has a single test, so no other thread
    // reads the environment meanwhile.
    std::env::set_var("HF_HOME", tmp.path());
    let model = StableDiffusion::load("dreamwalk-test/tiny-sd", None).unwrap();
    assert_eq!(model.name(), "dreamwalk-test/tiny-sd");
    assert!(model
        .decoders()
        .contains(&dreamwalk::model::DecoderKind::Vae));

    let missing = load_error("dreamwalk-test/not-downloaded");
    assert!(
        missing.contains("not-downloaded") && missing.contains("cache"),
        "{missing}"
    );

    // An unknown pipeline class names model_index.json and the family.
    let sdxl = tmp.path().join("sdxl");
    copy_dir(&common::fixture("tiny-sd"), &sdxl);
    let index = std::fs::read_to_string(sdxl.join("model_index.json")).unwrap();
    std::fs::write(
        sdxl.join("model_index.json"),
        index.replace("StableDiffusionPipeline", "StableDiffusionXLPipeline"),
    )
    .unwrap();
    let family = load_error(sdxl.to_str().unwrap());
    assert!(
        family.contains("model_index.json") && family.contains("unknown model family"),
        "{family}"
    );

    // A folder without a UNet names the missing path.
    let no_unet = tmp.path().join("no-unet");
    copy_dir(&common::fixture("tiny-sd"), &no_unet);
    std::fs::remove_dir_all(no_unet.join("unet")).unwrap();
    let unet = load_error(no_unet.to_str().unwrap());
    assert!(unet.contains("unet"), "{unet}");
}
