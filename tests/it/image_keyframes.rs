//! Pictures as keyframes: reading PNG/JPEG/WebP and the errors that name the file, diffusers'
//! img2img recipe (where it starts, how it noises, how many UNet calls), the encoded picture
//! as a keyframe of the tiny model, and `render --keyframe image:PATH` end to end.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use dreamwalk::frame::RgbaImage;
use dreamwalk::model::keyframe::{fit_image, image_tensor, PAD_GREY};
use dreamwalk::model::schedulers::{
    img2img, img2img_first_step, Sampler, SamplerKind, Scheduler, SchedulerConfig,
};
use dreamwalk::model::{
    read_image, EndpointRequest, Engine, Fit, ImageKeyframe, Keyframe, StableDiffusion, VaeDecoder,
    VaeEncoder,
};
use dreamwalk::pipeline::SettingsError;

use crate::support::fixtures::{copy_dir, fixture, max_abs_diff};
use crate::support::images::{png_files, read_png_rgba};
use crate::support::process::dreamwalk;

/// A smooth picture: colour gradients and a soft disc, `w` x `h`.
fn smooth_picture(w: u32, h: u32) -> image::RgbaImage {
    image::RgbaImage::from_fn(w, h, |x, y| {
        let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
        let d = ((u - 0.6).powi(2) + (v - 0.45).powi(2)).sqrt();
        let disc = (1.0 - (d * 5.0).clamp(0.0, 1.0)) * 120.0;
        image::Rgba([
            (40.0 + 180.0 * u).min(255.0) as u8,
            (60.0 + 120.0 * v + disc).min(255.0) as u8,
            (200.0 - 150.0 * u + disc * 0.3).min(255.0) as u8,
            255,
        ])
    })
}

/// `picture` saved to `dir/name` (the format from the extension).
fn save(dir: &Path, name: &str, picture: &image::RgbaImage) -> PathBuf {
    let path = dir.join(name);
    match path.extension().and_then(|e| e.to_str()) {
        // JPEG has no alpha.
        Some("jpg") => image::DynamicImage::ImageRgba8(picture.clone())
            .to_rgb8()
            .save(&path)
            .unwrap(),
        _ => picture.save(&path).unwrap(),
    }
    path
}

fn as_frame(picture: &image::RgbaImage) -> RgbaImage {
    RgbaImage::from_pixels(picture.width(), picture.height(), picture.as_raw().clone()).unwrap()
}

/// Mean |a - b| over the RGB bytes of two images of one size.
fn mean_abs_diff(a: &RgbaImage, b: &RgbaImage) -> f64 {
    assert_eq!((a.width, a.height), (b.width, b.height));
    let (mut sum, mut n) = (0u64, 0u64);
    for (p, q) in a.pixels.chunks_exact(4).zip(b.pixels.chunks_exact(4)) {
        for c in 0..3 {
            sum += u64::from(p[c].abs_diff(q[c]));
            n += 1;
        }
    }
    sum as f64 / n as f64
}

/// A PNG whose header says it is `w` x `h` (nothing after the header: the size is refused
/// before any decoding).
fn png_header_only(path: &Path, w: u32, h: u32) {
    let mut bytes = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    bytes.extend(w.to_be_bytes());
    bytes.extend(h.to_be_bytes());
    bytes.extend([8, 6, 0, 0, 0, 0, 0, 0, 0]);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn png_jpeg_and_webp_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let picture = smooth_picture(96, 64);
    let expected = as_frame(&picture);
    for (name, bound) in [("a.png", 0.0), ("a.webp", 0.0), ("a.jpg", 2.0)] {
        let read = read_image(&save(dir.path(), name, &picture)).unwrap();
        assert_eq!((read.width, read.height), (96, 64), "{name}");
        // PNG and (lossless) WebP give the bytes back; JPEG at the encoder's default
        // quality (75) moves this smooth picture by 0.91 levels on average (measured).
        let diff = mean_abs_diff(&read, &expected);
        assert!(diff <= bound, "{name}: mean |diff| {diff}");
    }
}

#[test]
fn transparency_is_flattened_onto_the_pad_grey() {
    let dir = tempfile::tempdir().unwrap();
    let mut picture = image::RgbaImage::from_pixel(4, 2, image::Rgba([255, 0, 0, 255]));
    picture.put_pixel(0, 0, image::Rgba([255, 0, 0, 0]));
    picture.put_pixel(1, 0, image::Rgba([255, 0, 0, 128]));
    let read = read_image(&save(dir.path(), "alpha.png", &picture)).unwrap();
    assert_eq!(&read.pixels[0..4], &[PAD_GREY, PAD_GREY, PAD_GREY, 255]);
    // (255 x 128 + 128 x 127) / 255 = 191.75, (128 x 127) / 255 = 63.75.
    assert_eq!(&read.pixels[4..8], &[192, 64, 64, 255]);
    assert_eq!(&read.pixels[8..12], &[255, 0, 0, 255]);
}

#[test]
fn unreadable_pictures_are_errors_that_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.png");
    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not a picture at all").unwrap();
    let zero = dir.path().join("zero.png");
    png_header_only(&zero, 0, 16);
    let gif = dir.path().join("anim.gif");
    std::fs::write(&gif, b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap();
    let truncated = dir.path().join("truncated.png");
    let whole = std::fs::read(save(dir.path(), "whole.png", &smooth_picture(32, 32))).unwrap();
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    for (path, says) in [
        (&missing, "not found"),
        (&empty, "an empty file"),
        (&text, "not a PNG, JPEG or WebP image"),
        (&zero, "an image of zero size (0x16)"),
        (&gif, "a GIF image"),
        (&truncated, "cannot decode"),
    ] {
        let err = read_image(path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(says), "{err}");
    }
}

fn tiny_scheduler(kind: SamplerKind, config: &str, steps: usize) -> Sampler {
    let config = SchedulerConfig::load(&fixture(config)).unwrap();
    Sampler::new(&config, kind, steps).unwrap()
}

fn randn(seed: u64, shape: &[usize]) -> Tensor {
    dreamwalk::model::sd::seeded_noise(seed, shape, &Device::Cpu).unwrap()
}

/// The recipe with a stand-in UNet that records what it is given: the number of calls is
/// `int(steps x strength)`, the timesteps are the schedule's from `steps - that` on, and the
/// first input is `sqrt(a) x + sqrt(1 - a) noise` at that timestep (DDIM, whose model input
/// is the latents), computed here from the schedule's own `alphas_cumprod`.
#[test]
fn img2img_runs_the_last_steps_from_the_noised_picture_ddim() {
    let steps = 10;
    let sampler = tiny_scheduler(
        SamplerKind::Ddim,
        "tiny-sd/scheduler/scheduler_config.json",
        steps,
    );
    let shape = [1, 4, 6, 8];
    let (image, noise) = (randn(1, &shape), randn(2, &shape));
    for (strength, runs) in [(0.3, 3), (0.5, 5), (0.75, 7), (1.0, 10)] {
        for guidance in [1.0, 7.5] {
            let mut calls: Vec<(f64, Tensor)> = Vec::new();
            let mut stepped = Vec::new();
            img2img(
                &sampler,
                &image,
                &noise,
                strength,
                guidance,
                |x, t| {
                    calls.push((t, x.clone()));
                    // A constant prediction: the loop must still step every time.
                    Ok((x.zeros_like()? + 0.1)?)
                },
                |i, n| stepped.push((i, n)),
            )
            .unwrap();
            assert_eq!(img2img_first_step(steps, strength), steps - runs);
            assert_eq!(calls.len(), runs, "strength {strength}: UNet calls");
            let first = steps - runs;
            let timesteps: Vec<f64> = calls.iter().map(|(t, _)| *t).collect();
            assert_eq!(timesteps, sampler.timesteps()[first..].to_vec());
            assert_eq!(stepped.first(), Some(&(first, steps)));
            // The first model input: the picture noised to timesteps[first].
            let a = sampler.alphas_cumprod()[sampler.timesteps()[first] as usize];
            let expected =
                ((&image * a.sqrt()).unwrap() + (&noise * (1.0 - a).sqrt()).unwrap()).unwrap();
            let input = &calls[0].1;
            let batch = if guidance > 1.0 { 2 } else { 1 };
            assert_eq!(input.dim(0).unwrap(), batch, "guided: the batch doubled");
            for b in 0..batch {
                // f32 arithmetic on O(1) values: within a few ulps of the f64 formula.
                let diff = max_abs_diff(&input.narrow(0, b, 1).unwrap(), &expected);
                assert!(
                    diff < 1e-6,
                    "strength {strength}: noised start off by {diff}"
                );
            }
        }
    }
    // Nothing to run: refused, not an empty loop.
    let none = img2img(
        &sampler,
        &image,
        &noise,
        0.05,
        1.0,
        |x, _| Ok(x.clone()),
        |_, _| {},
    );
    assert!(none.unwrap_err().to_string().contains("runs no step"));
}

/// Euler's img2img start is `x + sigma noise` at the first step's sigma, and its model
/// input is that over `sqrt(sigma^2 + 1)`; sigma from `alphas_cumprod` at the (integral,
/// trailing) timestep.
#[test]
fn img2img_noises_to_the_first_sigma_euler() {
    let steps = 4;
    let sampler = tiny_scheduler(SamplerKind::Euler, "euler/scheduler_config.json", steps);
    let shape = [1, 4, 6, 8];
    let (image, noise) = (randn(3, &shape), randn(4, &shape));
    let mut calls = Vec::new();
    img2img(
        &sampler,
        &image,
        &noise,
        0.5,
        1.0,
        |x, t| {
            calls.push((t, x.clone()));
            Ok(x.zeros_like()?)
        },
        |_, _| {},
    )
    .unwrap();
    assert_eq!(calls.len(), 2);
    let t = sampler.timesteps()[2];
    assert_eq!(calls[0].0, t);
    let a = sampler.alphas_cumprod()[t as usize];
    let sigma = ((1.0 - a) / a).sqrt();
    let expected =
        (((&image + (&noise * sigma).unwrap()).unwrap()) / (sigma * sigma + 1.0).sqrt()).unwrap();
    let diff = max_abs_diff(&calls[0].1, &expected);
    assert!(diff < 1e-5, "Euler's noised start off by {diff}");
}

fn tiny_sd() -> StableDiffusion {
    StableDiffusion::load(fixture("tiny-sd").to_str().unwrap(), None).unwrap()
}

fn image_keyframe(path: &Path, picture: &image::RgbaImage, strength: f64) -> Keyframe {
    Keyframe::Image(ImageKeyframe {
        strength,
        prompt: "an oil painting".into(),
        ..ImageKeyframe::new(path.to_path_buf(), Arc::new(as_frame(picture)))
    })
}

fn request(keyframes: Vec<Keyframe>, steps: usize, image_size: (u32, u32)) -> EndpointRequest {
    EndpointRequest {
        keyframes,
        negative: String::new(),
        seed: 11,
        seed_per_keyframe: false,
        steps,
        guidance: 7.5,
        image_size,
        init_latents: None,
    }
}

/// The VAE encoding of `picture` fitted to `size` (what the keyframe's latents must be).
fn encoded(picture: &image::RgbaImage, size: (u32, u32), fit: Fit) -> Tensor {
    let encoder = VaeEncoder::load(&fixture("tiny-sd/vae"), &Device::Cpu).unwrap();
    let fitted = fit_image(&as_frame(picture), size, fit);
    encoder.encode(&image_tensor(&fitted).unwrap()).unwrap()
}

#[test]
fn a_picture_keyframe_is_its_vae_encoding_or_img2img_from_it() {
    let engine = tiny_sd();
    let picture = smooth_picture(96, 64);
    let path = PathBuf::from("picture.png");
    let size = (64, 48);
    let mut progress = Vec::new();
    let latents = engine
        .endpoints(
            &request(
                vec![image_keyframe(&path, &picture, 0.0), "a red fox".into()],
                10,
                size,
            ),
            &mut |p| {
                progress.push((p.keyframe, p.step));
                true
            },
        )
        .unwrap();
    // Strength 0: exactly the encoder's latents (the encoder itself is checked against
    // diffusers in `encoders`); one progress report, then the prompt's ten steps.
    assert_eq!(latents[0].dims(), &[1, 4, 24, 32]);
    let expected = encoded(&picture, size, Fit::Crop);
    assert_eq!(max_abs_diff(&latents[0], &expected), 0.0);
    assert_eq!(progress.iter().filter(|p| p.0 == 0).count(), 1);
    assert_eq!(progress.iter().filter(|p| p.0 == 1).count(), 10);

    // Strength 0.5 of 10 steps: five UNet steps, reported as steps 6 to 10 of 10.
    let mut steps_run = Vec::new();
    let run = |strength, steps_run: &mut Vec<usize>| {
        engine
            .endpoints(
                &request(vec![image_keyframe(&path, &picture, strength)], 10, size),
                &mut |p| {
                    steps_run.push(p.step);
                    true
                },
            )
            .unwrap()
            .remove(0)
    };
    let half = run(0.5, &mut steps_run);
    assert_eq!(steps_run, vec![6, 7, 8, 9, 10]);
    assert!(
        max_abs_diff(&half, &expected) > 0.1,
        "img2img changed the latents"
    );
    let again = run(0.5, &mut Vec::new());
    assert_eq!(max_abs_diff(&half, &again), 0.0, "seeded: the same twice");
    // The same recipe through the model's own entry point, from the encoding and the
    // seed's noise: the keyframe is exactly that.
    let noise = dreamwalk::model::sd::seeded_noise(11, &[1, 4, 24, 32], &Device::Cpu).unwrap();
    let direct = engine
        .sample_image(
            "an oil painting",
            "",
            &expected,
            &noise,
            0.5,
            10,
            7.5,
            |_, _| true,
        )
        .unwrap();
    assert_eq!(max_abs_diff(&half, &direct), 0.0);

    // Pad instead of crop: another picture in the frame, other latents.
    let mut padded = request(vec![image_keyframe(&path, &picture, 0.0)], 10, size);
    if let Keyframe::Image(image) = &mut padded.keyframes[0] {
        image.fit = Fit::Pad;
    }
    let pad = engine.endpoints(&padded, &mut |_| true).unwrap().remove(0);
    assert_eq!(max_abs_diff(&pad, &encoded(&picture, size, Fit::Pad)), 0.0);
    assert!(max_abs_diff(&pad, &expected) > 0.01);
}

#[test]
fn settings_refuse_pictures_that_cannot_run() {
    let engine = tiny_sd();
    let settings = |keyframe: Keyframe, steps: usize| {
        let mut settings = dreamwalk::pipeline::Settings {
            endpoints: request(vec!["a red fox".into(), keyframe], steps, (64, 48)),
            walk: Default::default(),
            decoder: dreamwalk::model::DecoderKind::Vae,
            inbetweens: dreamwalk::pipeline::Inbetweens::Fixed(0),
            target_fps: 30.0,
            upscale: dreamwalk::upscale::UpscaleMode::None,
            output_size: (64, 48),
            diffuse: 0,
        };
        settings.walk.steps_between = 2;
        settings.validate(&engine)
    };
    let picture = smooth_picture(8, 8);
    let path = Path::new("/pictures/photo.png");
    assert_eq!(settings(image_keyframe(path, &picture, 0.5), 10), Ok(()));
    let problem = |keyframe, steps| match settings(keyframe, steps) {
        Err(e @ SettingsError::ImageKeyframe { index: 2, .. }) => e.to_string(),
        other => panic!("expected an image keyframe error, got {other:?}"),
    };
    let zero = Keyframe::Image(ImageKeyframe::new(
        path.to_path_buf(),
        Arc::new(RgbaImage::new(0, 5)),
    ));
    let message = problem(zero, 10);
    assert!(message.contains("/pictures/photo.png"), "{message}");
    assert!(message.contains("an image of zero size (0x5)"), "{message}");
    let message = problem(image_keyframe(path, &picture, 1.5), 10);
    assert!(
        message.contains("strength must be between 0 and 1, not 1.5"),
        "{message}"
    );
    let message = problem(image_keyframe(path, &picture, 0.05), 10);
    assert!(message.contains("runs no step"), "{message}");
}

/// `render` on the tiny model with the VAE, no in-betweens, no upscale: `extra` arguments
/// name the keyframes. Returns the frames.
fn render(out: &Path, keyframes: &[&str]) -> Vec<RgbaImage> {
    let result = dreamwalk()
        .arg("render")
        .arg("--model")
        .arg(fixture("tiny-sd"))
        .args(keyframes)
        .args(["--steps", "2", "--steps-between", "2", "--inbetween", "0"])
        .args(["--upscale", "none", "--decoder", "vae", "--source", "64x48"])
        .arg("--out")
        .arg(out)
        .output()
        .expect("run dreamwalk");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "render failed: {stderr}");
    png_files(out).iter().map(|f| read_png_rgba(f)).collect()
}

#[test]
fn render_walks_from_and_to_pictures_in_command_line_order() {
    let dir = tempfile::tempdir().unwrap();
    let picture = smooth_picture(96, 64);
    let photo = save(dir.path(), "photo.png", &picture);
    let keyframe = format!("image:{}", photo.display());
    // What the picture's keyframe decodes to: its VAE encoding decoded by the VAE, as the
    // walk's first frame is. (The tiny model's VAE has random weights, so this does not
    // look like the picture: the test is that the frame is the picture's round trip.)
    let decoder = VaeDecoder::load(&fixture("tiny-sd/vae"), &Device::Cpu).unwrap();
    let latents = encoded(&picture, (64, 48), Fit::Crop);
    let round_trip =
        dreamwalk::model::sd::image_from_decoded(&decoder.decode(&latents).unwrap()).unwrap();

    let first = render(
        &dir.path().join("first"),
        &["--keyframe", &keyframe, "--prompt", "a red fox"],
    );
    // Two keyframes, two walk steps: three frames.
    assert_eq!(first.len(), 3);
    // The walk's first position is the keyframe itself: measured identical (0.0). Slerp at
    // t = 0 could move a latent by an ulp, a decoded byte by one level on a few pixels;
    // the prompt's keyframe is ~65 levels away, and the picture itself ~47 (the tiny VAE's
    // weights are random, so its round trip is not the picture).
    let close = |frame: &RgbaImage| mean_abs_diff(frame, &round_trip) < 0.01;
    assert!(
        close(&first[0]),
        "first frame: {}",
        mean_abs_diff(&first[0], &round_trip)
    );
    assert!(
        !close(&first[2]),
        "the prompt's keyframe is another picture"
    );

    let last = render(
        &dir.path().join("last"),
        &["--prompt", "a red fox", "--keyframe", &keyframe],
    );
    assert_eq!(last.len(), 3);
    assert!(
        close(&last[2]),
        "last frame: {}",
        mean_abs_diff(&last[2], &round_trip)
    );
    // The prompt's keyframe is the same whichever side it is on.
    assert!(mean_abs_diff(&last[0], &first[2]) < 0.01);

    // Between two prompts: keyframe 2 of 3, frame 2 of 5.
    let middle = render(
        &dir.path().join("middle"),
        &[
            "--prompt",
            "a red fox",
            "--keyframe",
            &keyframe,
            "--prompt",
            "a lighthouse",
        ],
    );
    assert_eq!(middle.len(), 5);
    assert!(
        close(&middle[2]),
        "middle frame: {}",
        mean_abs_diff(&middle[2], &round_trip)
    );
    assert!(mean_abs_diff(&middle[0], &first[2]) < 0.01);
}

#[test]
fn render_refuses_bad_pictures_before_loading_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let zero = dir.path().join("zero.png");
    png_header_only(&zero, 16, 0);
    let text = dir.path().join("notes.webp");
    std::fs::write(&text, "hello").unwrap();
    let missing = dir.path().join("missing.jpg");
    let out = dir.path().join("out");
    let error = |args: &[&str]| {
        let result = dreamwalk()
            .args(["render", "--model", "/nonexistent/model"])
            .args(args)
            .arg("--out")
            .arg(&out)
            .output()
            .expect("run dreamwalk");
        assert!(!result.status.success());
        let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{stderr}");
        // The picture is read first: the missing model is never reached.
        assert!(!stderr.contains("/nonexistent/model"), "{stderr}");
        stderr
    };
    for (path, says) in [
        (&zero, "an image of zero size (16x0)"),
        (&text, "not a PNG, JPEG or WebP image"),
        (&missing, "not found"),
    ] {
        let keyframe = format!("image:{}", path.display());
        let stderr = error(&["--prompt", "a red fox", "--keyframe", &keyframe]);
        assert!(stderr.contains(&path.display().to_string()), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert!(stderr.contains("image keyframe 2"), "{stderr}");
    }
    let stderr = error(&["--prompt", "a", "--keyframe", "photo.png"]);
    assert!(stderr.contains("write image:PATH"), "{stderr}");
    assert!(!out.exists(), "nothing written");
}

#[test]
fn render_refuses_a_strength_that_runs_no_step() {
    let dir = tempfile::tempdir().unwrap();
    let photo = save(dir.path(), "photo.png", &smooth_picture(16, 16));
    let result = dreamwalk()
        .arg("render")
        .arg("--model")
        .arg(fixture("tiny-sd"))
        .args(["--prompt", "a red fox", "--keyframe"])
        .arg(format!("image:{}", photo.display()))
        .args([
            "--strength",
            "0.05",
            "--steps",
            "10",
            "--source",
            "64x48",
            "--out",
        ])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("keyframe 2") && stderr.contains("photo.png"),
        "{stderr}"
    );
    assert!(stderr.contains("runs no step"), "{stderr}");
}

/// `--prompt` and `--keyframe` in one list, in the order given; `Cli::parse` alone would
/// list every prompt first.
#[test]
fn the_command_line_keeps_keyframe_order() {
    use clap::CommandFactory;
    use dreamwalk::cli::{Cli, Command, KeyframeArg};
    // clap checks its definitions only in debug builds: ask for it here.
    Cli::command().debug_assert();
    let cli = Cli::try_parse_in_order_from([
        "dreamwalk",
        "render",
        "--keyframe",
        "image:a.png",
        "--prompt",
        "b",
        "--keyframe",
        "prompt:c",
        "--prompt",
        "d",
        "--out",
        "x",
    ])
    .unwrap();
    let Some(Command::Render(args)) = cli.command else {
        panic!("render");
    };
    assert!(args.prompts.is_empty());
    assert_eq!(
        args.keyframes,
        vec![
            KeyframeArg::Image("a.png".into()),
            KeyframeArg::Prompt("b".into()),
            KeyframeArg::Prompt("c".into()),
            KeyframeArg::Prompt("d".into()),
        ]
    );
    // Images alone make a walk; neither kind alone is required.
    assert!(Cli::try_parse_in_order_from(["dreamwalk", "render", "--out", "x"]).is_err());
    assert!(Cli::try_parse_in_order_from([
        "dreamwalk",
        "render",
        "--keyframe",
        "image:a.png",
        "--keyframe",
        "image:b.png",
        "--out",
        "x"
    ])
    .is_ok());
}

/// A model whose VAE file holds only the decoder encodes pictures with TAESD's encoder
/// (given with `taesd`). The fixture TAESD scales by 8 where the tiny VAE scales by 2, so
/// its latents cannot be the tiny UNet's: the error says so and names the picture, which
/// shows the fallback ran.
#[test]
fn without_a_vae_encoder_the_taesd_encoder_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny-sd");
    crate::support::fixtures::copy_dir(&fixture("tiny-sd"), &model);
    let weights = model
        .join("vae")
        .join("diffusion_pytorch_model.safetensors");
    let decoder_only: std::collections::HashMap<String, Tensor> =
        candle_core::safetensors::load(&weights, &Device::Cpu)
            .unwrap()
            .into_iter()
            .filter(|(name, _)| !name.starts_with("encoder.") && !name.starts_with("quant_conv."))
            .collect();
    candle_core::safetensors::save(&decoder_only, &weights).unwrap();
    let picture = smooth_picture(64, 48);
    let path = PathBuf::from("/pictures/photo.png");
    let without_taesd = StableDiffusion::load(model.to_str().unwrap(), None).unwrap();
    let keyframes = vec![image_keyframe(&path, &picture, 0.0)];
    let err = without_taesd
        .endpoints(&request(keyframes.clone(), 2, (64, 48)), &mut |_| true)
        .unwrap_err()
        .to_string();
    // No encoder at all: the VAE file's problem, named.
    assert!(err.contains("diffusion_pytorch_model.safetensors"), "{err}");
    let with_taesd =
        StableDiffusion::load(model.to_str().unwrap(), Some(&fixture("taesd"))).unwrap();
    let err = with_taesd
        .endpoints(&request(keyframes, 2, (64, 48)), &mut |_| true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("/pictures/photo.png"), "{err}");
    assert!(
        err.contains("[1, 4, 6, 8]") && err.contains("[1, 4, 24, 32]"),
        "{err}"
    );
}

/// A model whose VAE file holds only the decoder (and no TAESD encoder anywhere) cannot
/// encode pictures: a render with a picture keyframe is refused, naming the file, before any
/// frame is made; the same model still walks between prompts.
#[test]
fn a_model_that_cannot_encode_pictures_is_refused_before_the_walk() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("decoder-only");
    copy_dir(&fixture("tiny-sd"), &model);
    let weights = model.join("vae/diffusion_pytorch_model.safetensors");
    let decoder_only: std::collections::HashMap<String, Tensor> =
        candle_core::safetensors::load(&weights, &Device::Cpu)
            .unwrap()
            .into_iter()
            .filter(|(name, _)| {
                name.starts_with("decoder.") || name.starts_with("post_quant_conv.")
            })
            .collect();
    candle_core::safetensors::save(&decoder_only, &weights).unwrap();
    // No TAESD from a Hugging Face cache either.
    let empty_cache = dir.path().join("hf");
    let photo = save(dir.path(), "photo.png", &smooth_picture(16, 16));
    let render = |keyframe: &[&str], out: &Path| {
        dreamwalk()
            .env("HF_HOME", &empty_cache)
            .env("HF_HUB_CACHE", empty_cache.join("hub"))
            .arg("render")
            .arg("--model")
            .arg(&model)
            .args(["--prompt", "a red fox"])
            .args(keyframe)
            .args(["--steps", "1", "--steps-between", "1", "--inbetween", "0"])
            .args(["--source", "64x48", "--out"])
            .arg(out)
            .output()
            .unwrap()
    };
    let out = dir.path().join("with-picture");
    let image_arg = format!("image:{}", photo.display());
    let result = render(&["--keyframe", &image_arg], &out);
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("cannot turn pictures into keyframes"),
        "{stderr}"
    );
    assert!(stderr.contains(&weights.display().to_string()), "{stderr}");
    assert!(!out.exists() || png_files(&out).is_empty(), "no frame made");

    let prompts_only = dir.path().join("prompts");
    let result = render(&["--prompt", "a lighthouse"], &prompts_only);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(png_files(&prompts_only).len(), 2);
}
