//! The SD x4 upscaler against diffusers (`tiny-x4/` with `x4/`), tiled denoising (one tile
//! is the untiled loop, for the upscaler and for text-to-image; several overlapping tiles
//! stay close; quadrants are four separate runs), Immerkaer's noise estimator, the noise
//! stop and its tile map, and `dreamwalk upscale` end to end with its refusals.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::{DType, Tensor};
use dreamwalk::frame::RgbaImage;
use dreamwalk::model::schedulers::denoise;
use dreamwalk::model::sd::StableDiffusion;
use dreamwalk::model::tiled::{
    immerkaer_sigma, seam_ratio, NoiseStop, TileLayout, TileRect, TiledOutcome, Tiling,
};
use dreamwalk::model::x4::{X4Noise, X4Request, X4Upscaler};
use dreamwalk::usecase::{upscale, UpscaleJob};

use crate::support::fixtures::{fixture, load_tensors, max_abs_diff, random};
use crate::support::images::{png_texts, read_png, read_png_rgb};
use crate::support::process::dreamwalk;

/// The tiny upscaler, loaded once for the tests of this module.
fn upscaler() -> &'static X4Upscaler {
    static MODEL: OnceLock<X4Upscaler> = OnceLock::new();
    MODEL.get_or_init(|| X4Upscaler::load(fixture("tiny-x4").to_str().unwrap()).unwrap())
}

fn settings() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("x4/settings.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn case() -> HashMap<String, Tensor> {
    load_tensors("x4/case.safetensors")
}

/// The fixture's pipeline call (`x4/settings.json`, the case's picture and noise).
fn fixture_request(tiling: Tiling) -> X4Request {
    let s = settings();
    let case = case();
    X4Request {
        image: case["low_res_image"].clone(),
        prompt: s["prompt"].as_str().unwrap().into(),
        negative: s["negative"].as_str().unwrap().into(),
        steps: s["steps"].as_u64().unwrap() as usize,
        guidance: s["guidance"].as_f64().unwrap(),
        noise_level: s["noise_level"].as_u64().unwrap() as usize,
        noise: X4Noise::Given {
            latents: case["init_latents"].clone(),
            image_noise: case["image_noise"].clone(),
        },
        tiling,
        noise_stop: None,
    }
}

/// The latent's (rows, columns): the low-res picture's size.
fn latent_hw() -> (usize, usize) {
    let (_, _, h, w) = case()["init_latents"].dims4().unwrap();
    (h, w)
}

#[test]
fn x4_pipeline_matches_diffusers() {
    let case = case();
    let out = upscaler()
        .upscale(&fixture_request(Tiling::Whole), |_| {})
        .unwrap();
    // 1e-3: guidance 9 amplifies float32 rounding over the steps (the same bound as the
    // text-to-image loops against diffusers).
    let diff = max_abs_diff(&out.latents, &case["final_latents"]);
    assert!(diff <= 1e-3, "final latents: max |diff| {diff}");
    let image = out.image.permute((0, 2, 3, 1)).unwrap();
    let expected_size = &settings()["output_size"];
    assert_eq!(
        image.dims()[1..3],
        [
            expected_size[0].as_u64().unwrap() as usize,
            expected_size[1].as_u64().unwrap() as usize
        ]
    );
    // 2/255: one 8-bit step either way, what the latents' 1e-3 can move a pixel by through
    // the VAE, as for the text-to-image pipeline.
    let diff = max_abs_diff(&image, &case["image"]);
    assert!(
        diff <= 2.0 / 255.0,
        "image: max |diff| {:.2}/255",
        diff * 255.0
    );
}

#[test]
fn one_tile_covering_the_latent_is_the_untiled_loop() {
    let up = upscaler();
    let request = fixture_request(Tiling::Whole);
    let X4Noise::Given {
        latents,
        image_noise,
    } = &request.noise
    else {
        unreachable!()
    };
    let cond = up
        .conditioning(
            &request.image,
            &request.prompt,
            &request.negative,
            request.guidance,
            request.noise_level,
            image_noise,
        )
        .unwrap();
    let (h, w) = latent_hw();
    let whole = TileRect {
        y: 0,
        x: 0,
        height: h,
        width: w,
    };
    let sampler = up.sampler(request.steps).unwrap();
    // The untiled loop: the schedulers' own `denoise`.
    let reference = denoise(
        &sampler,
        latents,
        request.guidance,
        |x, t| up.predict(&cond, &whole, x, t),
        |_, _| {},
    )
    .unwrap();
    let side = h.max(w);
    for tiling in [
        Tiling::Whole,
        Tiling::Blended {
            tile: side,
            overlap: side / 4,
        },
        Tiling::Blended {
            tile: side + 7,
            overlap: 0,
        },
    ] {
        let (outcome, layout) = up
            .denoise(&cond, latents, request.steps, tiling, None, |_| {})
            .unwrap();
        assert_eq!(layout.tiles(), [whole], "{tiling}");
        // Exactly: the same inputs, guidance arithmetic and steps.
        assert_eq!(max_abs_diff(&outcome.latents, &reference), 0.0, "{tiling}");
    }

    // Text-to-image on tiny-sd, against `sample` (the walk's keyframe sampler).
    let sd = StableDiffusion::load(fixture("tiny-sd").to_str().unwrap(), None).unwrap();
    let (s, init) = e2e_settings();
    let prompt = s["prompt_a"].as_str().unwrap();
    let negative = s["negative"].as_str().unwrap();
    let steps = s["steps"].as_u64().unwrap() as usize;
    let guidance = s["guidance"].as_f64().unwrap();
    let sampled = sd
        .sample(prompt, negative, &init, steps, guidance, |_, _| true)
        .unwrap();
    let (_, _, h, w) = init.dims4().unwrap();
    let one_tile = Tiling::Blended {
        tile: h.max(w),
        overlap: 4,
    };
    let (tiled, layout) = sd
        .sample_tiled(
            prompt,
            negative,
            &init,
            steps,
            guidance,
            one_tile,
            None,
            |_| {},
        )
        .unwrap();
    assert_eq!(layout.tiles().len(), 1);
    assert_eq!(max_abs_diff(&tiled.latents, &sampled), 0.0);
}

/// `e2e/settings.json` and its initial latents.
fn e2e_settings() -> (serde_json::Value, Tensor) {
    let text = std::fs::read_to_string(fixture("e2e/settings.json")).unwrap();
    let init = load_tensors("e2e/case.safetensors")["init_latents"].clone();
    (serde_json::from_str(&text).unwrap(), init)
}

/// Mean |a - b| over the root mean square of `b`: how far a tiled result is from the
/// untiled one, relative to the latents' own size.
fn relative_mean_diff(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b).unwrap().abs().unwrap().mean_all().unwrap();
    let rms = b.sqr().unwrap().mean_all().unwrap().sqrt().unwrap();
    (diff / rms).unwrap().to_scalar::<f32>().unwrap()
}

fn all_finite(t: &Tensor) -> bool {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite())
}

#[test]
fn overlapping_tiles_blend_into_a_close_finite_result() {
    let up = upscaler();
    let untiled = up.upscale(&fixture_request(Tiling::Whole), |_| {}).unwrap();
    let (h, w) = latent_hw();
    let tiling = Tiling::Blended {
        tile: h.min(w) * 2 / 3,
        overlap: 2,
    };
    let mut steps_seen = Vec::new();
    let tiled = up
        .upscale(&fixture_request(tiling), |step| steps_seen.push(step.step))
        .unwrap();
    let tiles = tiled.layout.tiles().len();
    assert!(tiles >= 4, "{tiling} on {h}x{w}: {tiles} tiles");
    let steps = settings()["steps"].as_u64().unwrap() as usize;
    assert_eq!(steps_seen, (1..=steps).collect::<Vec<_>>());
    assert_eq!(tiled.outcome.calls_run(), tiles * steps);
    assert!(all_finite(&tiled.latents) && all_finite(&tiled.image));
    let x4_diff = relative_mean_diff(&tiled.latents, &untiled.latents);
    eprintln!("x4, {tiles} tiles: mean |tiled - untiled| / rms = {x4_diff:.3}");

    // Text-to-image: tiny-sd's latents in overlapping tiles.
    let sd = StableDiffusion::load(fixture("tiny-sd").to_str().unwrap(), None).unwrap();
    let (s, init) = e2e_settings();
    let (prompt, negative) = (s["prompt_a"].as_str().unwrap(), "");
    let steps = s["steps"].as_u64().unwrap() as usize;
    let guidance = s["guidance"].as_f64().unwrap();
    let sampled = sd
        .sample(prompt, negative, &init, steps, guidance, |_, _| true)
        .unwrap();
    let (_, _, h, w) = init.dims4().unwrap();
    let tiling = Tiling::Blended {
        tile: h.min(w) * 2 / 3,
        overlap: 4,
    };
    let (tiled_sd, layout) = sd
        .sample_tiled(
            prompt,
            negative,
            &init,
            steps,
            guidance,
            tiling,
            None,
            |_| {},
        )
        .unwrap();
    assert!(layout.tiles().len() >= 4);
    assert!(all_finite(&tiled_sd.latents));
    let sd_diff = relative_mean_diff(&tiled_sd.latents, &sampled);
    eprintln!(
        "text-to-image, {} tiles: mean |tiled - untiled| / rms = {sd_diff:.3}",
        layout.tiles().len()
    );
    // Close, not equal: each tile's UNet sees only its crop (convolutions at the tile's
    // edges, attention over its tokens), so the results part where the context matters;
    // but the same prompt, noise and schedule keep them the same picture, well inside the
    // latents' own size (measured ~0.1-0.3 on the fixtures; random weights, so loose).
    for (name, diff) in [("x4", x4_diff), ("text-to-image", sd_diff)] {
        assert!(diff < 0.6, "{name}: tiled result far from untiled ({diff})");
    }
}

#[test]
fn blend_weights_sum_to_one_over_tiles_that_cover_the_latent() {
    for ((h, w), tiling) in [
        (
            (12, 16),
            Tiling::Blended {
                tile: 8,
                overlap: 2,
            },
        ),
        (
            (100, 37),
            Tiling::Blended {
                tile: 32,
                overlap: 16,
            },
        ),
        (
            (64, 64),
            Tiling::Blended {
                tile: 24,
                overlap: 0,
            },
        ),
        ((13, 9), Tiling::Quadrants),
        ((20, 20), Tiling::Whole),
    ] {
        let layout = TileLayout::new(tiling, (h, w)).unwrap();
        let mut sum = vec![0f64; h * w];
        let mut covered = vec![0usize; h * w];
        for (k, tile) in layout.tiles().iter().enumerate() {
            assert!(tile.y + tile.height <= h && tile.x + tile.width <= w);
            for (i, &weight) in layout.weights(k).iter().enumerate() {
                let (y, x) = (tile.y + i / tile.width, tile.x + i % tile.width);
                assert!(
                    weight > 0.0,
                    "{tiling}: tile {k} weight {weight} at {y},{x}"
                );
                sum[y * w + x] += f64::from(weight);
                covered[y * w + x] += 1;
            }
        }
        for (i, s) in sum.iter().enumerate() {
            // Normalised in f64, stored as f32: a few ulps of one.
            assert!((s - 1.0).abs() < 1e-6, "{tiling}: sum {s} at pixel {i}");
        }
        if tiling == Tiling::Quadrants {
            assert_eq!(layout.tiles().len(), 4);
            assert!(covered.iter().all(|&c| c == 1), "quadrants overlap");
        }
    }
    for bad in [
        Tiling::Blended {
            tile: 0,
            overlap: 0,
        },
        Tiling::Blended {
            tile: 16,
            overlap: 9,
        },
    ] {
        let error = TileLayout::new(bad, (32, 32)).unwrap_err().to_string();
        assert!(error.contains("tile"), "{bad}: {error}");
    }
}

#[test]
fn quadrants_are_four_separate_upscales() {
    let up = upscaler();
    let request = fixture_request(Tiling::Quadrants);
    let X4Noise::Given {
        latents,
        image_noise,
    } = &request.noise
    else {
        unreachable!()
    };
    let out = up.upscale(&request, |_| {}).unwrap();
    assert_eq!(out.layout.tiles().len(), 4);
    for rect in out.layout.tiles() {
        let crop = |t: &Tensor| dreamwalk::model::tiled::crop(t, rect).unwrap();
        let cond = up
            .conditioning(
                &crop(&request.image),
                &request.prompt,
                &request.negative,
                request.guidance,
                request.noise_level,
                &crop(image_noise),
            )
            .unwrap();
        let (alone, _) = up
            .denoise(
                &cond,
                &crop(latents),
                request.steps,
                Tiling::Whole,
                None,
                |_| {},
            )
            .unwrap();
        // Exactly: a quadrant's tile is its own run (weight one, no neighbour).
        let diff = max_abs_diff(&crop(&out.latents), &alone.latents);
        assert_eq!(diff, 0.0, "quadrant {rect}");
    }
}

#[test]
fn immerkaer_estimates_the_noise_of_a_flat_picture() {
    let (h, w) = (160, 120);
    for sigma in [0.01, 0.1, 0.5] {
        let noise = random(&[h * w], 7, sigma, 0.0).to_vec1::<f32>().unwrap();
        // The deviation of the noise actually drawn, computed directly.
        let mean = noise.iter().map(|&v| f64::from(v)).sum::<f64>() / noise.len() as f64;
        let drawn = (noise
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / noise.len() as f64)
            .sqrt();
        let plane: Vec<f32> = noise.iter().map(|v| 0.3 + v).collect();
        let estimate = immerkaer_sigma(&plane, h, w).unwrap();
        // 3%: the estimator's own spread over ~19,000 pixels is about 1%.
        assert!(
            (estimate / drawn - 1.0).abs() < 0.03,
            "sigma {sigma}: estimate {estimate}, drawn {drawn}"
        );
    }
    // A tilted plane has no noise: the kernel cancels it.
    let plane: Vec<f32> = (0..h * w)
        .map(|i| 0.002 * (i / w) as f32 - 0.001 * (i % w) as f32 + 0.5)
        .collect();
    assert!(immerkaer_sigma(&plane, h, w).unwrap() < 1e-5);
    assert_eq!(immerkaer_sigma(&[0.0; 4], 2, 2), None);
}

/// What the noise stop did, checked against its own rule: a tile that ran fewer steps than
/// all ran at least `min_steps` and stopped at an estimate below the threshold.
fn check_stops(outcome: &TiledOutcome, stop: NoiseStop) {
    for (i, tile) in outcome.tiles.iter().enumerate() {
        assert_eq!(tile.noise_history.len(), tile.steps_run, "tile {i}");
        if tile.steps_run < outcome.steps {
            let noise = tile.noise.expect("tiles of at least 3x3 have an estimate");
            assert!(noise < stop.threshold, "tile {i} stopped at noise {noise}");
            assert!(
                tile.steps_run >= stop.min_steps,
                "tile {i}: {}",
                tile.steps_run
            );
        }
    }
}

#[test]
fn a_tile_below_the_noise_threshold_stops_refining() {
    let up = upscaler();
    let (h, w) = latent_hw();
    let tiling = Tiling::Blended {
        tile: h.min(w) * 2 / 3,
        overlap: 2,
    };
    let run = |stop: Option<NoiseStop>| {
        let request = X4Request {
            noise_stop: stop,
            ..fixture_request(tiling)
        };
        up.upscale(&request, |_| {}).unwrap()
    };
    let full = run(None);
    let (steps, total) = (full.outcome.steps, full.outcome.calls_total());
    let tiles = full.layout.tiles().len();
    assert_eq!(full.outcome.calls_run(), total);
    let min_steps = steps / 2;

    // Past every estimate: each tile stops as soon as it may.
    let always = NoiseStop {
        threshold: 1e9,
        min_steps,
    };
    let stopped = run(Some(always));
    assert_eq!(stopped.outcome.calls_run(), tiles * min_steps);
    assert_eq!(stopped.outcome.calls_saved(), tiles * (steps - min_steps));
    check_stops(&stopped.outcome, always);
    assert!(all_finite(&stopped.latents) && all_finite(&stopped.image));

    // Below every estimate: nothing stops, and the result is the full run's.
    let never = run(Some(NoiseStop {
        threshold: 0.0,
        min_steps: 0,
    }));
    assert_eq!(never.outcome.calls_run(), total);
    assert_eq!(max_abs_diff(&never.latents, &full.latents), 0.0);

    // At the median of the estimates after `min_steps` steps: the tiles below it stop
    // there (until then the run is the full one), the others may stop later.
    let mut at_min: Vec<f64> = full
        .outcome
        .tiles
        .iter()
        .map(|t| t.noise_history[min_steps - 1])
        .collect();
    at_min.sort_by(f64::total_cmp);
    let median = NoiseStop {
        threshold: at_min[tiles / 2],
        min_steps,
    };
    let some = run(Some(median));
    check_stops(&some.outcome, median);
    let quiet = at_min.iter().filter(|&&n| n < median.threshold).count();
    assert!(quiet >= 1 && quiet < tiles, "{quiet} of {tiles}");
    assert!(some.outcome.calls_saved() >= quiet * (steps - min_steps));
    assert!(some.outcome.calls_run() > stopped.outcome.calls_run());
    eprintln!(
        "noise stop at {:.4} after {min_steps} steps: {} of {total} UNet tile calls run, {} \
         saved",
        median.threshold,
        some.outcome.calls_run(),
        some.outcome.calls_saved()
    );
    assert!(all_finite(&some.latents));
}

#[test]
fn seam_ratio_sees_a_seam_and_not_a_smooth_picture() {
    let (w, h) = (64u32, 48u32);
    let picture = |jump: u8| {
        let mut image = RgbaImage::new(w, h);
        for (i, p) in image.pixels.chunks_exact_mut(4).enumerate() {
            let (x, y) = (i as u32 % w, i as u32 / w);
            let base = (2 * x + y) as u8 + if x >= 32 { jump } else { 0 };
            p[..3].copy_from_slice(&[base, base / 2, 255 - base]);
        }
        image
    };
    let smooth = seam_ratio(&picture(0), &[32], &[24]).unwrap();
    assert!((smooth - 1.0).abs() < 0.25, "smooth picture: {smooth}");
    let seam = seam_ratio(&picture(40), &[32], &[]).unwrap();
    assert!(seam > 5.0, "a jump of 40 at column 32: {seam}");
    assert_eq!(seam_ratio(&picture(0), &[], &[]), None);
}

/// A smooth low-res test picture, larger than the fixture's, so that tiles and quadrants
/// have room: bands of colour with a gentle curve.
fn smooth_picture(w: u32, h: u32) -> RgbaImage {
    let mut image = RgbaImage::new(w, h);
    for (i, p) in image.pixels.chunks_exact_mut(4).enumerate() {
        let (x, y) = ((i as u32 % w) as f32, (i as u32 / w) as f32);
        let r = 128.0 + 100.0 * (x / 9.0).sin();
        let g = 128.0 + 90.0 * (y / 7.0 + x / 23.0).cos();
        let b = 60.0 + 2.0 * y;
        p[..3].copy_from_slice(&[r as u8, g as u8, b.min(255.0) as u8]);
    }
    image
}

#[test]
fn blended_tiles_leave_fainter_seams_than_quadrants() {
    let up = upscaler();
    let (w, h) = (48u32, 32u32);
    let image = dreamwalk::model::x4::unit_tensor(&smooth_picture(w, h)).unwrap();
    let run = |tiling: Tiling| {
        let request = X4Request {
            image: image.clone(),
            noise: X4Noise::Seed(3),
            steps: 6,
            ..fixture_request(tiling)
        };
        up.upscale(&request, |_| {}).unwrap().to_rgba().unwrap()
    };
    let scale = up.scale() as u32;
    // The quadrants' lines, in output pixels.
    let (columns, rows) = ([w / 2 * scale], [h / 2 * scale]);
    let quadrants = seam_ratio(&run(Tiling::Quadrants), &columns, &rows).unwrap();
    let blended = seam_ratio(
        &run(Tiling::Blended {
            tile: 24,
            overlap: 8,
        }),
        &columns,
        &rows,
    )
    .unwrap();
    let untiled = seam_ratio(&run(Tiling::Whole), &columns, &rows).unwrap();
    eprintln!(
        "seam ratio at the quadrant lines: quadrants {quadrants:.2}, blended {blended:.2}, \
         untiled {untiled:.2}"
    );
    assert!(
        blended < quadrants,
        "blended {blended} against quadrants {quadrants}"
    );
}

/// The fixture's low-res picture as a PNG in `dir`.
fn fixture_png(dir: &Path) -> std::path::PathBuf {
    let low_res = case()["low_res_image"]
        .to_dtype(DType::F32)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let (h, w) = (low_res[0].len(), low_res[0][0].len());
    let mut image = RgbaImage::new(w as u32, h as u32);
    for (i, p) in image.pixels.chunks_exact_mut(4).enumerate() {
        for c in 0..3 {
            p[c] = (low_res[c][i / w][i % w] * 255.0).round() as u8;
        }
    }
    let path = dir.join("low_res.png");
    dreamwalk::record::write_png(&path, &image, None).unwrap();
    path
}

fn job(dir: &Path, image: &Path) -> UpscaleJob {
    let s = settings();
    UpscaleJob {
        model: fixture("tiny-x4").to_str().unwrap().into(),
        image: image.to_path_buf(),
        prompt: s["prompt"].as_str().unwrap().into(),
        negative: String::new(),
        steps: 3,
        guidance: s["guidance"].as_f64().unwrap(),
        noise_level: s["noise_level"].as_u64().unwrap() as usize,
        seed: 1,
        tiling: Tiling::Blended {
            tile: 8,
            overlap: 2,
        },
        noise_stop: None,
        out: dir.join("out.png"),
        noise_map: Some(dir.join("map.png")),
        overwrite: false,
    }
}

#[test]
fn the_noise_map_is_written_at_the_output_size() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture_png(dir.path());
    let job = job(dir.path(), &input);
    let summary = upscale(&job, &mut ()).unwrap();
    let (h, w) = latent_hw();
    let scale = upscaler().scale();
    let out = read_png(&job.out);
    assert_eq!(
        (out.width, out.height),
        ((w * scale) as u32, (h * scale) as u32)
    );
    let map = read_png(job.noise_map.as_ref().unwrap());
    assert_eq!((map.width, map.height), (out.width, out.height));
    let layout = TileLayout::new(job.tiling, (h, w)).unwrap();
    let tiles = layout.tiles().len();
    assert_eq!(summary.calls_total, tiles * job.steps);
    assert_eq!(summary.calls_run, summary.calls_total);
    // One line per tile in the comment, and red = all steps run everywhere.
    let texts = png_texts(job.noise_map.as_ref().unwrap());
    let legend = &texts.iter().find(|(k, _)| k == "Comment").unwrap().1;
    assert_eq!(
        legend.lines().filter(|l| l.starts_with("tile ")).count(),
        tiles
    );
    let channels = map.color_type.samples();
    assert!(map.pixels.chunks_exact(channels).all(|p| p[0] == 255));
    // An existing output is refused without --overwrite, before any work.
    let again = upscale(&job, &mut ()).unwrap_err().to_string();
    assert!(again.contains("--overwrite"), "{again}");
}

#[test]
fn upscale_command_writes_a_png_four_times_larger() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture_png(dir.path());
    let out = dir.path().join("big.png");
    let map = dir.path().join("tiles.png");
    let output = dreamwalk()
        .arg("upscale")
        .arg("--model")
        .arg(fixture("tiny-x4"))
        .arg("--image")
        .arg(&input)
        .args(["--prompt", "a kingfisher", "--steps", "2"])
        .args([
            "--tile",
            "8",
            "--tile-overlap",
            "2",
            "--noise-threshold",
            "1e9",
            "--noise-min-steps",
            "1",
        ])
        .arg("--noise-map")
        .arg(&map)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let (h, w) = latent_hw();
    let (width, height, _) = read_png_rgb(&out);
    assert_eq!((width, height), (4 * w as u32, 4 * h as u32));
    assert_eq!(read_png(&map).width, width);
    assert!(stderr.contains("UNet tile calls"), "{stderr}");
    // A threshold no estimate reaches: every tile stops after its first step.
    let tiles = TileLayout::new(
        Tiling::Blended {
            tile: 8,
            overlap: 2,
        },
        (h, w),
    )
    .unwrap()
    .tiles()
    .len();
    assert!(
        stderr.contains(&format!("UNet tile calls {tiles} of {}", 2 * tiles)),
        "{stderr}"
    );
}

/// Runs `dreamwalk upscale` on `image` with `args` (one step, untiled unless they say
/// otherwise) to `dir/out.png`; returns whether it succeeded and its stderr, after checking
/// that a refused run wrote nothing.
fn run_upscale(dir: &Path, image: &Path, args: &[&str]) -> (bool, String) {
    let out = dir.join("out.png");
    let _ = std::fs::remove_file(&out);
    let output = dreamwalk()
        .arg("upscale")
        .arg("--model")
        .arg(fixture("tiny-x4"))
        .arg("--image")
        .arg(image)
        .args(["--steps", "1"])
        .args(match args.contains(&"--tiling") {
            true => &[][..],
            false => &["--tiling", "none"][..],
        })
        .arg("--out")
        .arg(&out)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        assert!(!out.exists(), "a refused upscale wrote {}", out.display());
    }
    (output.status.success(), stderr)
}

fn write_png_as(path: &Path, width: u32, height: u32, colour: png::ColorType, bytes: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(colour);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .write_header()
        .unwrap()
        .write_image_data(bytes)
        .unwrap();
}

#[test]
fn upscale_refuses_bad_input_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rgb = png::ColorType::Rgb;

    let small = d.join("small.png");
    write_png_as(&small, 4, 4, rgb, &[90; 4 * 4 * 3]);
    let (ok, stderr) = run_upscale(d, &small, &[]);
    assert!(
        !ok && stderr.contains("4x4") && stderr.contains("too small"),
        "{stderr}"
    );

    let large = d.join("large.png");
    write_png_as(&large, 4100, 8, rgb, &vec![90; 4100 * 8 * 3]);
    let (ok, stderr) = run_upscale(d, &large, &[]);
    assert!(
        !ok && stderr.contains("4100x8") && stderr.contains("too large"),
        "{stderr}"
    );

    let transparent = d.join("transparent.png");
    let mut rgba = vec![200u8; 16 * 12 * 4];
    rgba[3] = 0;
    write_png_as(&transparent, 16, 12, png::ColorType::Rgba, &rgba);
    let (ok, stderr) = run_upscale(d, &transparent, &[]);
    assert!(!ok && stderr.contains("transparency"), "{stderr}");
    assert!(
        stderr.contains("transparent.png"),
        "names the file: {stderr}"
    );

    let input = fixture_png(d);
    let (ok, stderr) = run_upscale(d, &input, &["--noise-level", "351"]);
    assert!(
        !ok && stderr.contains("351") && stderr.contains("350"),
        "{stderr}"
    );

    let (ok, stderr) = run_upscale(
        d,
        &input,
        &["--tile", "16", "--tile-overlap", "9", "--tiling", "blended"],
    );
    assert!(!ok && stderr.contains("overlap 9"), "{stderr}");

    let map = d.join("map.jpg");
    let (ok, stderr) = run_upscale(d, &input, &["--noise-map", map.to_str().unwrap()]);
    assert!(
        !ok && stderr.contains("map.jpg") && !map.exists(),
        "{stderr}"
    );

    // Not an x4 upscaler: the error says what the folder is.
    let output = dreamwalk()
        .args(["upscale", "--image"])
        .arg(&input)
        .arg("--model")
        .arg(fixture("tiny-sd"))
        .arg("--out")
        .arg(d.join("x.png"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("StableDiffusionPipeline"),
        "{stderr}"
    );

    // No --model: no demo upscaler, a clear error.
    let output = dreamwalk()
        .args(["upscale", "--image"])
        .arg(&input)
        .arg("--out")
        .arg(d.join("x.png"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("--model"),
        "{stderr}"
    );

    // Greyscale is converted, and says so; the output is RGB at 4x.
    let grey = d.join("grey.png");
    write_png_as(&grey, 12, 10, png::ColorType::Grayscale, &[120; 12 * 10]);
    let (ok, stderr) = run_upscale(d, &grey, &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("greyscale"), "{stderr}");
    let (width, height, _) = read_png_rgb(&d.join("out.png"));
    assert_eq!((width, height), (48, 40));
}

/// The folder of `tiny-x4` copied to a temp dir with `edit` applied to one of its JSON
/// files.
fn edited_x4(
    file: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    crate::support::fixtures::copy_dir(&fixture("tiny-x4"), dir.path());
    let path = dir.path().join(file);
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(value.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
    dir
}

#[test]
fn x4_folders_as_the_real_repo_writes_them_load_and_wrong_ones_are_refused_by_key() {
    // The original repo's VAE config has no scaling_factor (diffusers then uses 0.08333),
    // and a model_index.json without max_noise_level means diffusers' 350.
    let dir = edited_x4("vae/config.json", |vae| {
        vae.remove("scaling_factor");
    });
    let index = dir.path().join("model_index.json");
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    value.as_object_mut().unwrap().remove("max_noise_level");
    std::fs::write(&index, value.to_string()).unwrap();
    let loaded = X4Upscaler::load(dir.path().to_str().unwrap()).unwrap();
    assert_eq!(loaded.max_noise_level(), 350);
    let case = case();
    let latents = &case["final_latents"];
    let same = max_abs_diff(
        &loaded.decode(latents).unwrap(),
        &upscaler().decode(latents).unwrap(),
    );
    assert_eq!(same, 0.0, "the VAE scale is 0.08333 either way");

    for (file, key, edit) in [
        (
            "unet/config.json",
            "in_channels",
            Box::new(|m: &mut serde_json::Map<_, _>| {
                m.insert("in_channels".into(), 4.into());
            }) as Box<dyn FnOnce(&mut serde_json::Map<String, serde_json::Value>)>,
        ),
        (
            "unet/config.json",
            "num_class_embeds",
            Box::new(|m: &mut serde_json::Map<_, _>| {
                m.insert("num_class_embeds".into(), serde_json::Value::Null);
            }),
        ),
        (
            "model_index.json",
            "_class_name",
            Box::new(|m: &mut serde_json::Map<_, _>| {
                m.insert("_class_name".into(), "StableDiffusionPipeline".into());
            }),
        ),
        (
            "model_index.json",
            "max_noise_level",
            Box::new(|m: &mut serde_json::Map<_, _>| {
                m.insert("max_noise_level".into(), 5000.into());
            }),
        ),
    ] {
        let dir = edited_x4(file, edit);
        let error = match X4Upscaler::load(dir.path().to_str().unwrap()) {
            Ok(_) => panic!("{file} with a wrong `{key}` loaded"),
            Err(e) => e.to_string(),
        };
        assert!(
            error.contains(file.split('/').next().unwrap()) && error.contains(key),
            "{error}"
        );
    }
    // And a walk refuses the upscaler by name, pointing at `dreamwalk upscale`.
    let error = match StableDiffusion::load(fixture("tiny-x4").to_str().unwrap(), None) {
        Ok(_) => panic!("the x4 upscaler loaded as a walk model"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("dreamwalk upscale"), "{error}");
}
