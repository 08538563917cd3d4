//! Samplers against diffusers' DDIMScheduler / EulerDiscreteScheduler (fixtures `ddim/`,
//! `euler/`, `ddim_v/`, `tiny-sd/scheduler/`). No UNet here: the full loops are checked where
//! the UNet lives.

use candle_core::{Device, IndexOp, Tensor};
use dreamwalk::model::schedulers::{
    denoise, BetaSchedule, PredictionType, Sampler, SamplerKind, Scheduler, SchedulerConfig,
    TimestepSpacing,
};

use crate::support::fixtures::{fixture, load_tensors, max_abs_diff};

fn vec1(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn load_config(rel: &str) -> SchedulerConfig {
    SchedulerConfig::load(&fixture(rel)).unwrap()
}

/// The `ddim/` scheduler, as README section 4 describes it (built in code: the fixture ships
/// no config file for it).
fn ddim_config() -> SchedulerConfig {
    SchedulerConfig::stable_diffusion(PredictionType::Epsilon)
}

#[test]
fn ddim_schedule_matches_diffusers() {
    let case = load_tensors("ddim/case.safetensors");
    let expected_t = vec1(&case["timesteps"]);
    let sampler = Sampler::new(&ddim_config(), SamplerKind::Ddim, expected_t.len()).unwrap();
    assert_eq!(sampler.timesteps(), expected_t.as_slice());
    assert_eq!(sampler.init_noise_sigma(), 1.0);

    // Bound 1e-6 (README: float32 recomputations differ by up to ~3e-7 through accumulation
    // order); we reproduce torch's order, so this is in fact exact.
    let expected_acp = vec1(&case["alphas_cumprod"]);
    let acp = sampler.alphas_cumprod();
    assert_eq!(acp.len(), expected_acp.len());
    let acp_diff = acp
        .iter()
        .zip(&expected_acp)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    println!("alphas_cumprod max diff {acp_diff:e}");
    assert!(acp_diff <= 1e-6, "alphas_cumprod differ by {acp_diff}");
}

#[test]
fn ddim_steps_reproduce_fixture_latents() {
    let case = load_tensors("ddim/case.safetensors");
    let steps = case["timesteps"].dim(0).unwrap();
    let sampler = Sampler::new(&ddim_config(), SamplerKind::Ddim, steps).unwrap();
    let noise_pred = &case["step_noise_pred"];
    let step_latents = &case["step_latents"];
    // Chained from init_latents (not restarted from the fixture at each step), so errors
    // would accumulate. Bound 1e-4 absolute on latents up to |54|: float32 rounding of the
    // step is ~1e-6 relative.
    let mut x = case["init_latents"].clone();
    let mut worst = 0f32;
    for i in 0..steps {
        x = sampler.step(&noise_pred.i(i).unwrap(), i, &x).unwrap();
        let diff = max_abs_diff(&x, &step_latents.i(i).unwrap());
        worst = worst.max(diff);
        assert!(diff <= 1e-4, "step {i}: max diff {diff}");
    }
    println!("ddim chained steps: worst max diff {worst:e}");
    assert!(max_abs_diff(&x, &case["final_latents"]) <= 1e-4);
}

#[test]
fn denoise_runs_the_guided_loop() {
    // A stand-in model that replays the fixture's uncond/cond predictions with the batch
    // layout `denoise` promises: guided eps = u + g (c - u) must equal step_noise_pred. We
    // choose u = 0 and c = eps / g, so the result is exactly eps * (1/g) * g up to rounding.
    let case = load_tensors("ddim/case.safetensors");
    let steps = case["timesteps"].dim(0).unwrap();
    let g = f64::from(case["guidance_scale"].to_vec1::<f32>().unwrap()[0]);
    let sampler = Sampler::new(&ddim_config(), SamplerKind::Ddim, steps).unwrap();
    let noise_pred = case["step_noise_pred"].clone();
    let timesteps = vec1(&case["timesteps"]);
    let mut call = 0usize;
    let mut progress = Vec::new();
    let out = denoise(
        &sampler,
        &case["init_latents"],
        g,
        |input, t| {
            assert_eq!(input.dim(0).unwrap(), 2, "guided batch is cat([x, x])");
            assert_eq!(t, timesteps[call]);
            let eps = noise_pred.i(call).unwrap();
            call += 1;
            let uncond = eps.zeros_like().unwrap();
            let cond = (eps / g).unwrap();
            Ok(Tensor::cat(&[uncond, cond], 0).unwrap())
        },
        |i, n| progress.push((i, n)),
    )
    .unwrap();
    assert_eq!(call, steps);
    assert_eq!(progress, (0..steps).map(|i| (i, steps)).collect::<Vec<_>>());
    // Bound 1e-3: the stand-in's eps differs from the fixture's by rounding of /g*g (~1e-7
    // relative), amplified by up to ~15x through 20 steps, on latents up to |54|.
    let diff = max_abs_diff(&out, &case["final_latents"]);
    println!("denoise (replayed eps) final max diff {diff:e}");
    assert!(diff <= 1e-3, "max diff {diff}");

    // Guidance 1: one pass with the latents as they are.
    let mut batches = Vec::new();
    denoise(
        &sampler,
        &case["init_latents"],
        1.0,
        |input, _| {
            batches.push(input.dim(0).unwrap());
            Ok(input.zeros_like().unwrap())
        },
        |_, _| {},
    )
    .unwrap();
    assert_eq!(batches, vec![1; steps]);
}

#[test]
fn euler_trailing_schedule_matches_diffusers() {
    let cfg = load_config("euler/scheduler_config.json");
    assert_eq!(SamplerKind::default_for(&cfg), SamplerKind::Euler);
    assert_eq!(cfg.timestep_spacing, Some(TimestepSpacing::Trailing));
    let case = load_tensors("euler/case.safetensors");
    for n in [1usize, 2, 4] {
        let sampler = Sampler::new(&cfg, SamplerKind::Euler, n).unwrap();
        let expected_t = vec1(&case[&format!("timesteps_{n}")]);
        assert_eq!(
            sampler.timesteps(),
            expected_t.as_slice(),
            "timesteps for {n} steps"
        );
        let expected_sigmas = vec1(&case[&format!("sigmas_{n}")]);
        let sigmas = sampler.sigmas().unwrap();
        // Bound 1e-6 relative: float32 sigmas; we reproduce numpy's interpolation, so this
        // is in practice exact.
        assert_eq!(sigmas.len(), expected_sigmas.len());
        for (a, b) in sigmas.iter().zip(&expected_sigmas) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{n} steps: sigma {a} vs {b}"
            );
        }
        // Trailing spacing: the initial noise is scaled by the largest sigma itself.
        assert_eq!(sampler.init_noise_sigma(), expected_sigmas[0]);
    }
}

#[test]
fn euler_first_step_agrees_across_step_counts() {
    // All three runs start with the same UNet call (same x = init * sigma_0, same t = 999),
    // so the eps recovered from the 1-step run (x1 = x0 - sigma_0 * eps) must, stepped with
    // the 2- and 4-step schedules, give their first step_latents.
    let cfg = load_config("euler/scheduler_config.json");
    let case = load_tensors("euler/case.safetensors");
    let one = Sampler::new(&cfg, SamplerKind::Euler, 1).unwrap();
    let x0 = (&case["init_latents"] * one.init_noise_sigma()).unwrap();
    let sigma0 = one.sigmas().unwrap()[0];
    let eps = ((&x0 - &case["final_latents_1"]).unwrap() / sigma0).unwrap();
    // The recovered eps reproduces the 1-step result (bookkeeping of init_noise_sigma and
    // the final sigma 0).
    let again = one.step(&eps, 0, &x0).unwrap();
    assert!(max_abs_diff(&again, &case["final_latents_1"]) <= 1e-4);
    for n in [2usize, 4] {
        let sampler = Sampler::new(&cfg, SamplerKind::Euler, n).unwrap();
        assert_eq!(sampler.init_noise_sigma(), one.init_noise_sigma());
        let x = (&case["init_latents"] * sampler.init_noise_sigma()).unwrap();
        let x1 = sampler.step(&eps, 0, &x).unwrap();
        // Bound 1e-4: eps recovered by a float32 division by sigma_0 (~14.6), then one step.
        let diff = max_abs_diff(&x1, &case[&format!("step_latents_{n}")].i(0).unwrap());
        println!("euler {n} steps: first step max diff {diff:e}");
        assert!(diff <= 1e-4, "{n} steps: first step max diff {diff}");
    }
    // scale_model_input divides by sqrt(sigma^2 + 1).
    let scaled = one.scale_model_input(&x0, 0).unwrap();
    let expected = (&x0 / (sigma0 * sigma0 + 1.0).sqrt()).unwrap();
    assert!(max_abs_diff(&scaled, &expected) <= 1e-6);
}

#[test]
fn ddim_v_schedule_and_step() {
    let cfg = load_config("ddim_v/scheduler_config.json");
    assert_eq!(cfg.prediction_type, PredictionType::VPrediction);
    assert_eq!(SamplerKind::default_for(&cfg), SamplerKind::Ddim);
    let case = load_tensors("ddim_v/case.safetensors");
    let expected_t = vec1(&case["timesteps"]);
    let n = expected_t.len();
    let sampler = Sampler::new(&cfg, SamplerKind::Ddim, n).unwrap();
    assert_eq!(sampler.timesteps(), expected_t.as_slice());

    // Without the UNet's v we check the step against README section 8's formulas: for each
    // fixture step, solve x_prev = A x + B v for v (A, B from the README's x0/eps of v), then
    // the sampler must map (v, x) back to x_prev.
    let acp = sampler.alphas_cumprod();
    let steps = &case["step_latents"];
    let mut x = case["init_latents"].clone();
    let ratio = cfg.num_train_timesteps / n;
    for (i, &t) in expected_t.iter().enumerate() {
        let t = t as usize;
        let a = acp[t];
        // set_alpha_to_one is false here: past the start, alpha_cumprod[0].
        assert!(!cfg.set_alpha_to_one);
        let a_prev = if t >= ratio { acp[t - ratio] } else { acp[0] };
        let (sa, sb, sp, sq) = (
            a.sqrt(),
            (1.0 - a).sqrt(),
            a_prev.sqrt(),
            (1.0 - a_prev).sqrt(),
        );
        let coef_x = sp * sa + sq * sb;
        let coef_v = sq * sa - sp * sb;
        let x_prev = steps.i(i).unwrap();
        let v = ((&x_prev - (&x * coef_x).unwrap()).unwrap() / coef_v).unwrap();
        let stepped = sampler.step(&v, i, &x).unwrap();
        let diff = max_abs_diff(&stepped, &x_prev);
        assert!(diff <= 1e-4, "step {i}: max diff {diff}");
        x = x_prev;
    }
}

#[test]
fn tiny_sd_scheduler_is_ddim_leading() {
    let cfg = load_config("tiny-sd/scheduler/scheduler_config.json");
    assert_eq!(SamplerKind::default_for(&cfg), SamplerKind::Ddim);
    // e2e/ ran 10 steps (e2e/settings.json); leading spacing: i * N/10 + steps_offset.
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("e2e/settings.json")).unwrap())
            .unwrap();
    let n = settings["steps"].as_u64().unwrap() as usize;
    let sampler = Sampler::new(&cfg, SamplerKind::Ddim, n).unwrap();
    let ratio = cfg.num_train_timesteps / n;
    let expected: Vec<f64> = (0..n)
        .rev()
        .map(|i| (i * ratio + cfg.steps_offset) as f64)
        .collect();
    assert_eq!(sampler.timesteps(), expected.as_slice());
}

#[test]
fn trailing_three_steps_is_not_candles() {
    // The case candle-transformers gets wrong: 1000 is not a multiple of 3.
    let cfg = SchedulerConfig {
        timestep_spacing: Some(TimestepSpacing::Trailing),
        ..SchedulerConfig::stable_diffusion(PredictionType::Epsilon)
    };
    for kind in [SamplerKind::Ddim, SamplerKind::Euler] {
        let sampler = Sampler::new(&cfg, kind, 3).unwrap();
        assert_eq!(sampler.timesteps(), &[999.0, 666.0, 332.0], "{kind:?}");
        // 1000 / 16 = 62.5: 1000 - 3 * 62.5 = 812.5 rounds to 812 as numpy rounds (half to
        // even), not 813.
        let sampler = Sampler::new(&cfg, kind, 16).unwrap();
        assert_eq!(sampler.timesteps()[3], 811.0, "{kind:?}");
    }
}

#[test]
fn spacing_defaults_follow_the_sampler() {
    // Without `timestep_spacing`: DDIM uses leading, Euler linspace (fractional, unrounded).
    let cfg = SchedulerConfig::stable_diffusion(PredictionType::Epsilon);
    let ddim = Sampler::new(&cfg, SamplerKind::Ddim, 4).unwrap();
    assert_eq!(ddim.timesteps(), &[751.0, 501.0, 251.0, 1.0]);
    let euler = Sampler::new(&cfg, SamplerKind::Euler, 4).unwrap();
    assert_eq!(euler.timesteps(), &[999.0, 666.0, 333.0, 0.0]);
    let euler = Sampler::new(&cfg, SamplerKind::Euler, 3).unwrap();
    assert_eq!(euler.timesteps(), &[999.0, 499.5, 0.0]);
    // DDIM linspace rounds half to even, as numpy.
    let cfg = SchedulerConfig {
        timestep_spacing: Some(TimestepSpacing::Linspace),
        ..cfg
    };
    let ddim = Sampler::new(&cfg, SamplerKind::Ddim, 3).unwrap();
    assert_eq!(ddim.timesteps(), &[999.0, 500.0, 0.0]);
}

#[test]
fn pndm_config_of_sd15_reads() {
    // SD 1.5's scheduler_config.json is a PNDM one without prediction_type/timestep_spacing.
    let text = r#"{"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0",
        "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true,
        "steps_offset": 1, "trained_betas": null, "clip_sample": false}"#;
    let cfg: SchedulerConfig = serde_json::from_str(text).unwrap();
    assert_eq!(
        cfg,
        SchedulerConfig {
            class_name: Some("PNDMScheduler".into()),
            ..SchedulerConfig::stable_diffusion(PredictionType::Epsilon)
        }
    );
    assert_eq!(SamplerKind::default_for(&cfg), SamplerKind::Ddim);
}

#[test]
fn invalid_configs_are_errors() {
    let bad = r#"{"beta_schedule": "cosine"}"#;
    let err = serde_json::from_str::<SchedulerConfig>(bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cosine"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scheduler_config.json");
    std::fs::write(&path, bad).unwrap();
    let err = SchedulerConfig::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("scheduler_config.json") && err.contains("cosine"),
        "{err}"
    );

    let cfg = SchedulerConfig {
        beta_schedule: BetaSchedule::ScaledLinear,
        ..SchedulerConfig::default()
    };
    assert!(Sampler::new(&cfg, SamplerKind::Ddim, 0).is_err());
    assert!(Sampler::new(&cfg, SamplerKind::Euler, 0).is_err());
    assert!(Sampler::new(&cfg, SamplerKind::Ddim, 1001).is_err());
    assert!(Sampler::new(&cfg, SamplerKind::Euler, 1001).is_err());
    assert!(Sampler::new(&cfg, SamplerKind::Ddim, 1000).is_ok());
    let short = SchedulerConfig {
        trained_betas: Some(vec![0.01; 10]),
        ..cfg.clone()
    };
    assert!(Sampler::new(&short, SamplerKind::Ddim, 5).is_err());
    let karras = SchedulerConfig {
        use_karras_sigmas: Some(true),
        ..cfg.clone()
    };
    assert!(Sampler::new(&karras, SamplerKind::Euler, 5).is_err());

    let sampler = Sampler::new(&cfg, SamplerKind::Ddim, 2).unwrap();
    let x = Tensor::zeros((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(sampler.step(&x, 2, &x).is_err(), "step index past the end");
}

#[test]
fn predicted_original_is_the_clean_sample_and_output_for_original_its_inverse() {
    use crate::support::fixtures::random;
    let x0 = random(&[1, 4, 6, 5], 11, 1.0, 0.2);
    let noise = random(&[1, 4, 6, 5], 12, 1.0, 0.0);
    for prediction in [
        PredictionType::Epsilon,
        PredictionType::VPrediction,
        PredictionType::Sample,
    ] {
        let config = SchedulerConfig::stable_diffusion(prediction);
        for kind in [SamplerKind::Ddim, SamplerKind::Euler] {
            let sampler = Sampler::new(&config, kind, 10).unwrap();
            for step in [0, 4, 9] {
                // The latents at this step, and the output an exact model would give there:
                // from the same definitions the schedulers' step uses (DDIM: x = sqrt(a) x0 +
                // sqrt(1 - a) eps; Euler: x = x0 + sigma eps, model input scaled).
                let x = sampler.add_noise(&x0, &noise, step).unwrap();
                let exact = sampler.output_for_original(&x0, step, &x).unwrap();
                let back = sampler.predicted_original(&exact, step, &x).unwrap();
                // f32 rounding through a division by sqrt(1 - a) or sigma (as small as
                // ~0.03 at the last step).
                let diff = max_abs_diff(&back, &x0);
                assert!(diff < 1e-4, "{prediction:?} {kind:?} step {step}: {diff}");
                if prediction == PredictionType::Epsilon {
                    // The implied noise is the noise that was added.
                    let diff = max_abs_diff(&exact, &noise);
                    assert!(diff < 1e-3, "{kind:?} step {step}: eps off by {diff}");
                }
            }
        }
    }
}

/// The scalars the GPU runs a step with are each scheduler's own step: for every prediction
/// type, both samplers, clipped and not, at the first, a middle and the last step, applying
/// `linear_step` gives `step`'s latents, and `input_scale` gives `scale_model_input`'s.
#[test]
fn linear_step_is_the_step() {
    use crate::support::fixtures::random;
    let x = random(&[2, 4, 5, 7], 21, 3.0, 0.1);
    let out = random(&[2, 4, 5, 7], 22, 1.5, -0.2);
    for prediction in [
        PredictionType::Epsilon,
        PredictionType::VPrediction,
        PredictionType::Sample,
    ] {
        for clip in [false, true] {
            let mut config = SchedulerConfig::stable_diffusion(prediction);
            config.clip_sample = clip;
            config.clip_sample_range = 1.0;
            for kind in [SamplerKind::Ddim, SamplerKind::Euler] {
                let sampler = Sampler::new(&config, kind, 10).unwrap();
                for step in [0, 4, 9] {
                    let coeffs = sampler.linear_step(step).unwrap();
                    let expected = sampler.step(&out, step, &x).unwrap();
                    let got = coeffs.apply(&out, &x).unwrap();
                    // Latents up to ~30 in magnitude at Euler's first sigma: relative f32
                    // rounding of a different order of operations.
                    let scale = vec1(&expected).iter().fold(1.0f64, |m, v| m.max(v.abs()));
                    let diff = f64::from(max_abs_diff(&got, &expected)) / scale;
                    assert!(
                        diff < 1e-5,
                        "{prediction:?} {kind:?} clip {clip} step {step}: relative {diff}"
                    );
                    let scaled = sampler.scale_model_input(&x, step).unwrap();
                    let by_scale = x.affine(f64::from(coeffs.input_scale), 0.0).unwrap();
                    let diff = max_abs_diff(&scaled, &by_scale);
                    assert!(
                        diff < 1e-5,
                        "{kind:?} step {step}: input scale off by {diff}"
                    );
                }
            }
        }
    }
}
