//! A picture keyframe at a strength above 0 against diffusers' own
//! `StableDiffusionImg2ImgPipeline` (`tests/fixtures/img2img/`, made by `make_img2img.py`
//! there): the same picture file, prompt, strength, steps, guidance and noise give the same
//! encoded latents, final latents and decoded image.

use candle_core::Tensor;
use dreamwalk::frame::RgbaImage;
use dreamwalk::model::keyframe::{fit_image, image_tensor};
use dreamwalk::model::{read_image, DecoderKind, Engine, Fit, StableDiffusion, VaeEncoder};

use crate::support::fixtures::{
    fixture, load_tensors_at, made_from_this_set, max_abs_diff, own_fixture,
};

fn settings() -> serde_json::Value {
    let text = std::fs::read_to_string(own_fixture("img2img", "settings.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The largest difference, in 1/255 steps, between a frame and an (1, H, W, 3) image in
/// [0, 1].
fn worst_pixel_diff(frame: &RgbaImage, reference: &Tensor) -> f32 {
    let reference = reference.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(reference.len(), (frame.width * frame.height * 3) as usize);
    frame
        .pixels
        .chunks_exact(4)
        .zip(reference.chunks_exact(3))
        .flat_map(|(p, r)| (0..3).map(move |c| (f32::from(p[c]) - r[c] * 255.0).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn an_image_keyframe_at_a_strength_is_the_diffusers_img2img_pipeline() {
    let s = settings();
    let case = load_tensors_at(&own_fixture("img2img", "case.safetensors"));
    let size = (
        s["width"].as_u64().unwrap() as u32,
        s["height"].as_u64().unwrap() as u32,
    );
    let picture = read_image(&own_fixture("img2img", s["picture"].as_str().unwrap())).unwrap();
    // The picture is the walk's size: the fit changes nothing, as diffusers resizes nothing.
    let fitted = fit_image(&picture, size, Fit::Crop);
    assert_eq!(fitted.pixels, picture.pixels);

    let model_dir = fixture("tiny-sd");
    let engine = StableDiffusion::load(model_dir.to_str().unwrap(), None).unwrap();
    let encoder = VaeEncoder::load(&model_dir.join("vae"), &candle_core::Device::Cpu).unwrap();
    let image_latents = encoder.encode(&image_tensor(&fitted).unwrap()).unwrap();
    let mut steps_run = 0;
    let latents = engine
        .sample_image(
            s["prompt"].as_str().unwrap(),
            s["negative"].as_str().unwrap(),
            &image_latents,
            &case["noise"],
            s["strength"].as_f64().unwrap(),
            s["steps"].as_u64().unwrap() as usize,
            s["guidance"].as_f64().unwrap(),
            |_, _| {
                steps_run += 1;
                true
            },
        )
        .unwrap();
    // Strength 0.6 of 10 steps: diffusers runs int(6.0) = 6 of them.
    assert_eq!(steps_run, 6);
    let frame = engine.decode(&latents, DecoderKind::Vae).unwrap();
    assert_eq!((frame.width, frame.height), size);

    if !made_from_this_set(&s) {
        eprintln!("tests/fixtures/img2img was made from another tiny-sd; comparison skipped");
        assert!(max_abs_diff(&latents, &image_latents) > 0.05);
        return;
    }
    // The encoder's mean, scaled, as the pipeline's (patched to take the mean).
    let encoded = max_abs_diff(&image_latents, &case["image_latents"]);
    assert!(encoded <= 1e-4, "encoded latents off by {encoded}");
    // 1e-3, as the e2e test: guidance amplifies f32 rounding over the steps.
    let diff = max_abs_diff(&latents, &case["final_latents"]);
    eprintln!("img2img final latents: max |diff| {diff:.2e}");
    assert!(diff <= 1e-3, "final latents off by {diff}");
    // The bound means something: the run moves the latents far from the picture's.
    assert!(max_abs_diff(&case["final_latents"], &case["image_latents"]) > 1.0);
    let worst = worst_pixel_diff(&frame, &case["image"]);
    assert!(worst <= 2.0, "image off by {worst:.2}/255");
}
