//! The UNet against diffusers (`unet/`, `euler/` fixtures), the model folders `tiny-sd/`
//! and `tiny-x4/`, real SD config files, and the errors a user sees.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use dreamwalk::model::unet::{PerBlock, UNet2DConditionModel, UNetConfig};

use crate::support::fixtures::{fixture, load_tensors, max_abs_diff, model_folder};

/// f32 against diffusers' f32: the README puts f32-vs-f64 of this output at 2.3e-6, the
/// rounding noise of one pass. 1e-4 leaves room for a different but equally valid
/// summation order (gemm blocking, fused attention) while any real mistake (a swapped
/// weight, the tanh GELU, 32 groups instead of 8) is orders of magnitude larger.
const UNET_TOLERANCE: f32 = 1e-4;

fn scalar(t: &Tensor) -> f64 {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as f64
}

#[test]
fn matches_diffusers_unet_fixture() {
    let case = load_tensors("unet/case.safetensors");
    let unet = UNet2DConditionModel::load(&fixture("unet"), &Device::Cpu).unwrap();
    let out = unet
        .forward(
            &case["sample"],
            scalar(&case["timestep"]),
            &case["encoder_hidden_states"],
        )
        .unwrap();
    let diff = max_abs_diff(&out, &case["out"]);
    println!("unet/case max |diff| = {diff:.3e}");
    assert!(
        diff <= UNET_TOLERANCE,
        "max |diff| {diff} > {UNET_TOLERANCE}"
    );
}

#[test]
fn new_from_var_builder_matches_load() {
    // The `new` path (config parsed by the caller), on the first row of the batch alone.
    let case = load_tensors("unet/case.safetensors");
    let cfg: UNetConfig =
        dreamwalk::model::weights::read_config(&fixture("unet/config.json")).unwrap();
    let vb = dreamwalk::model::weights::mmap_var_builder(
        &[fixture("unet/model.safetensors")],
        &Device::Cpu,
    )
    .unwrap();
    let unet = UNet2DConditionModel::new(vb, &cfg).unwrap();
    assert_eq!(unet.in_channels(), 4);
    assert_eq!(unet.config(), &cfg);
    let row = |name: &str| case[name].narrow(0, 0, 1).unwrap();
    let out = unet
        .forward(
            &row("sample"),
            scalar(&case["timestep"]),
            &row("encoder_hidden_states"),
        )
        .unwrap();
    let diff = max_abs_diff(&out, &row("out"));
    println!("unet/case row 0 alone max |diff| = {diff:.3e}");
    assert!(
        diff <= UNET_TOLERANCE,
        "max |diff| {diff} > {UNET_TOLERANCE}"
    );
}

#[test]
fn non_square_latents_match_diffusers_euler_step() {
    // euler/ (16x24 latents): one Euler step from sigma_max to 0 is
    // x0 = x - sigma * unet(x / sqrt(sigma^2 + 1), t, cond), with x = init * sigma.
    let case = load_tensors("euler/case.safetensors");
    let unet = UNet2DConditionModel::load(&fixture("unet"), &Device::Cpu).unwrap();
    let sigma = case["sigmas_1"].to_vec1::<f32>().unwrap()[0];
    let x = (&case["init_latents"] * sigma as f64).unwrap();
    let model_in = (&x / ((sigma * sigma + 1.0).sqrt() as f64)).unwrap();
    let eps = unet
        .forward(&model_in, scalar(&case["timesteps_1"]), &case["cond"])
        .unwrap();
    let x0 = x.sub(&(eps * sigma as f64).unwrap()).unwrap();
    let diff = max_abs_diff(&x0, &case["final_latents_1"]);
    println!("euler 1-step (sigma {sigma}) max |diff| = {diff:.3e}");
    // The UNet's error is multiplied by sigma (~14.6) in x0.
    let bound = UNET_TOLERANCE * (1.0 + sigma);
    assert!(diff <= bound, "max |diff| {diff} > {bound}");
}

#[test]
fn tiny_sd_unet_runs_on_non_square_latents() {
    let unet = UNet2DConditionModel::load(&fixture("tiny-sd/unet"), &Device::Cpu).unwrap();
    let latents = Tensor::randn(0f32, 1.0, (1, 4, 24, 32), &Device::Cpu).unwrap();
    let context = Tensor::randn(0f32, 1.0, (1, 77, 32), &Device::Cpu).unwrap();
    let out = unet.forward(&latents, 981.0, &context).unwrap();
    assert_eq!(out.dims(), &[1, 4, 24, 32]);
    let sum = out
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(sum.is_finite() && sum > 0.0);
}

#[test]
fn tiny_x4_unet_uses_class_labels() {
    let dev = Device::Cpu;
    let unet = UNet2DConditionModel::load(&fixture("tiny-x4/unet"), &dev).unwrap();
    assert_eq!(unet.in_channels(), 7);
    assert_eq!(
        unet.config().only_cross_attention,
        PerBlock::Each(vec![true, false])
    );
    assert!(unet.config().use_linear_projection);
    let sample = Tensor::randn(0f32, 1.0, (2, 7, 12, 16), &dev).unwrap();
    let context = Tensor::randn(0f32, 1.0, (2, 77, 32), &dev).unwrap();
    let labels = Tensor::new(&[20u32, 20], &dev).unwrap();
    let out = unet
        .forward_with_class_labels(&sample, 901.0, &context, Some(&labels))
        .unwrap();
    assert_eq!(out.dims(), &[2, 4, 12, 16]);

    // The noise level must reach the output (i64 labels, as diffusers passes them).
    let other = Tensor::new(&[300i64, 300], &dev).unwrap();
    let out_other = unet
        .forward_with_class_labels(&sample, 901.0, &context, Some(&other))
        .unwrap();
    assert!(max_abs_diff(&out, &out_other) > 1e-3);

    let missing = unet.forward(&sample, 901.0, &context).unwrap_err();
    assert!(missing.to_string().contains("class_labels"), "{missing}");
    let out_of_range = Tensor::new(&[1000u32, 0], &dev).unwrap();
    let err = unet
        .forward_with_class_labels(&sample, 901.0, &context, Some(&out_of_range))
        .unwrap_err();
    assert!(err.to_string().contains("1000"), "{err}");
}

#[test]
fn bad_inputs_are_refused_with_shapes() {
    let dev = Device::Cpu;
    let unet = UNet2DConditionModel::load(&fixture("unet"), &dev).unwrap();
    let ctx = Tensor::zeros((1, 8, 32), DType::F32, &dev).unwrap();
    let wrong_channels = Tensor::zeros((1, 3, 16, 16), DType::F32, &dev).unwrap();
    let err = unet.forward(&wrong_channels, 1.0, &ctx).unwrap_err();
    assert!(err.to_string().contains("4 channels"), "{err}");
    let sample = Tensor::zeros((1, 4, 16, 16), DType::F32, &dev).unwrap();
    let wrong_ctx = Tensor::zeros((1, 8, 768), DType::F32, &dev).unwrap();
    let err = unet.forward(&sample, 1.0, &wrong_ctx).unwrap_err();
    assert!(err.to_string().contains("768"), "{err}");
}

/// A copy of the `unet/` fixture folder, with the weights transformed by `edit`.
fn edited_unet_dir(
    edit: impl FnOnce(&mut std::collections::HashMap<String, Tensor>),
) -> tempfile::TempDir {
    let mut tensors = load_tensors("unet/model.safetensors");
    edit(&mut tensors);
    let (dir, _) = model_folder(
        "unet/config.json",
        &tensors,
        "diffusion_pytorch_model.safetensors",
    );
    dir
}

#[test]
fn missing_tensor_names_file_and_tensor() {
    let name = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight";
    let dir = edited_unet_dir(|t| {
        t.remove(name);
    });
    let err = UNet2DConditionModel::load(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    println!("{err}");
    assert!(err.contains("diffusion_pytorch_model.safetensors"), "{err}");
    assert!(err.contains(name), "{err}");
}

#[test]
fn wrong_shape_names_file_and_tensor() {
    let name = "up_blocks.1.resnets.0.conv1.weight";
    let dir = edited_unet_dir(|t| {
        t.insert(
            name.to_string(),
            Tensor::zeros((32, 95, 3, 3), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = UNet2DConditionModel::load(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    println!("{err}");
    assert!(err.contains("diffusion_pytorch_model.safetensors"), "{err}");
    assert!(err.contains(name), "{err}");
}

#[test]
fn unsupported_config_options_name_the_key() {
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("unet/config.json")).unwrap())
            .unwrap();
    let cases: [(&str, serde_json::Value); 9] = [
        ("addition_embed_type", "text_time".into()),
        ("time_cond_proj_dim", 256.into()),
        ("class_embed_type", "timestep".into()),
        ("resnet_time_scale_shift", "scale_shift".into()),
        ("dual_cross_attention", true.into()),
        ("encoder_hid_dim", 1024.into()),
        (
            "down_block_types",
            serde_json::json!(["SimpleCrossAttnDownBlock2D", "DownBlock2D"]),
        ),
        ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn".into()),
        (
            "up_block_types",
            serde_json::json!(["UpBlock2D", "AttnUpBlock2D"]),
        ),
    ];
    for (key, value) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = base.clone();
        cfg[key] = value;
        let path = dir.path().join("config.json");
        std::fs::write(&path, cfg.to_string()).unwrap();
        std::fs::copy(
            fixture("unet/model.safetensors"),
            dir.path().join("diffusion_pytorch_model.safetensors"),
        )
        .unwrap();
        let err = UNet2DConditionModel::load(dir.path(), &Device::Cpu)
            .unwrap_err()
            .to_string();
        println!("{err}");
        assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        assert!(err.contains(&path.display().to_string()), "{key}: {err}");
    }
}

#[test]
fn nested_transformer_layers_list_is_refused() {
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("unet/config.json")).unwrap())
            .unwrap();
    cfg["transformer_layers_per_block"] = serde_json::json!([[1, 2], [1, 2]]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let err = UNet2DConditionModel::load(dir.path(), &Device::Cpu).unwrap_err();
    println!("{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(
        err.to_string().contains("`transformer_layers_per_block`"),
        "{err}"
    );
}

#[test]
fn missing_config_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = UNet2DConditionModel::load(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    println!("{err}");
    let expected = dir.path().join("config.json").display().to_string();
    assert!(err.contains(&expected), "{err}");
}

const SD15_DOWN: &str =
    r#"["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]"#;
const SD15_UP: &str =
    r#"["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]"#;

/// The `unet/config.json` of runwayml/stable-diffusion-v1-5 (its keys and values).
fn sd15_json() -> String {
    format!(
        r#"{{"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0",
        "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": false, "cross_attention_dim": 768, "down_block_types": {SD15_DOWN},
        "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
        "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
        "norm_num_groups": 32, "out_channels": 4, "sample_size": 64, "up_block_types": {SD15_UP}}}"#
    )
}

/// SD 2.1 (768, v-prediction); SD 2.1 base and SD-Turbo differ only in `sample_size`,
/// `upcast_attention` and the extra null keys newer diffusers write.
fn sd21_json(sample_size: usize, upcast: bool) -> String {
    format!(
        r#"{{"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.10.0.dev0",
        "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20],
        "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false,
        "cross_attention_dim": 1024, "down_block_types": {SD15_DOWN}, "downsample_padding": 1,
        "dual_cross_attention": false, "flip_sin_to_cos": true, "freq_shift": 0,
        "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1,
        "norm_eps": 1e-05, "norm_num_groups": 32, "num_class_embeds": null,
        "only_cross_attention": false, "out_channels": 4, "sample_size": {sample_size},
        "up_block_types": {SD15_UP}, "upcast_attention": {upcast}, "use_linear_projection": true,
        "addition_embed_type": null, "class_embed_type": null, "time_cond_proj_dim": null,
        "resnet_time_scale_shift": "default", "transformer_layers_per_block": 1,
        "num_attention_heads": null, "encoder_hid_dim": null, "mid_block_type": "UNetMidBlock2DCrossAttn"}}"#
    )
}

/// stabilityai/stable-diffusion-x4-upscaler's `unet/config.json`.
fn x4_json() -> String {
    r#"{"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.12.0.dev0",
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [256, 512, 512, 1024],
    "center_input_sample": false, "cross_attention_dim": 1024,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": false, "flip_sin_to_cos": true,
    "freq_shift": 0, "in_channels": 7, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-05, "norm_num_groups": 32, "num_class_embeds": 1000,
    "only_cross_attention": [true, true, true, false], "out_channels": 4,
    "resnet_time_scale_shift": "default", "sample_size": 128,
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": false, "use_linear_projection": true}"#
        .to_string()
}

/// The same architecture with every width divided by `divisor` (and 8 groups, a 32-wide
/// context), so it can be built with random weights in a test.
fn shrunk(cfg: &UNetConfig, divisor: usize) -> UNetConfig {
    UNetConfig {
        block_out_channels: cfg.block_out_channels.iter().map(|c| c / divisor).collect(),
        norm_num_groups: Some(8),
        cross_attention_dim: PerBlock::All(32),
        ..cfg.clone()
    }
}

fn run_random(cfg: &UNetConfig, hw: (usize, usize)) -> Tensor {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let unet = UNet2DConditionModel::new(vb, cfg).unwrap();
    let sample = Tensor::randn(0f32, 1.0, (2, cfg.in_channels, hw.0, hw.1), &dev).unwrap();
    let ctx = Tensor::randn(0f32, 1.0, (2, 5, 32), &dev).unwrap();
    let labels = Tensor::new(&[20u32, 350], &dev).unwrap();
    unet.forward_with_class_labels(&sample, 999.0, &ctx, Some(&labels))
        .unwrap()
}

#[test]
fn real_sd_configs_parse_and_their_architectures_run() {
    let parse = |text: &str| serde_json::from_str::<UNetConfig>(text).unwrap();

    let sd15 = parse(&sd15_json());
    sd15.validate().unwrap();
    assert_eq!(sd15.cross_attention_dim, PerBlock::All(768));
    assert_eq!(sd15.attention_head_dim, PerBlock::All(8));
    assert_eq!(
        sd15.mid_block_type.as_deref(),
        Some("UNetMidBlock2DCrossAttn")
    );

    for (size, upcast) in [(96, true), (64, false)] {
        let sd21 = parse(&sd21_json(size, upcast));
        sd21.validate().unwrap();
        assert_eq!(sd21.attention_head_dim, PerBlock::Each(vec![5, 10, 20, 20]));
        assert!(sd21.use_linear_projection);
        // Shrunk by 10: 32/64/128/128 channels with 5/10/20/20 heads, so head dims are
        // floored (6) and the attention width differs from the channels, as diffusers
        // would build it.
        let out = run_random(&shrunk(&sd21, 10), (16, 24));
        assert_eq!(out.dims(), &[2, 4, 16, 24]);
    }

    let x4 = parse(&x4_json());
    x4.validate().unwrap();
    assert_eq!(x4.num_class_embeds, Some(1000));
    assert_eq!(
        x4.only_cross_attention,
        PerBlock::Each(vec![true, true, true, false])
    );
    let out = run_random(&shrunk(&x4, 16), (8, 16));
    assert_eq!(out.dims(), &[2, 4, 8, 16]);

    let out = run_random(&shrunk(&sd15, 10), (24, 16));
    assert_eq!(out.dims(), &[2, 4, 24, 16]);
}

#[test]
fn odd_latent_sizes_follow_diffusers_upsample_size() {
    // 2 levels: an odd size is down-sampled to ceil(n/2) and up-sampled back to n.
    let cfg: UNetConfig =
        dreamwalk::model::weights::read_config(&fixture("unet/config.json")).unwrap();
    let out = run_random(&cfg, (15, 17));
    assert_eq!(out.dims(), &[2, 4, 15, 17]);
}
