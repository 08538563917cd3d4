//! The TAESD decoder on the GPU (WGSL) against the CPU decoder and diffusers
//! (`fixtures/taesd/`, README section 1).
//!
//! These tests need a GPU adapter and FAIL without one: on machines without a GPU, install
//! the software Vulkan driver (Debian: `mesa-vulkan-drivers libvulkan1`). Latents are kept
//! small: on a software adapter a 18x32 decode takes seconds.

use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use dreamwalk::gpu::{
    create_output_texture, read_texture, upscale_to_image, BicubicUpscaler, GpuError, GpuTaesd,
    OUTPUT_FORMAT,
};
use dreamwalk::model::{TaesdConfig, TaesdDecoder};

use crate::support::fixtures::{fixture, load_tensors, max_abs_diff, max_byte_diff};
use crate::support::gpu::{original_names, randn_latents, shared_gpu_context as gpu, texture};

/// The contract on the float output. The GPU sums each 3x3 convolution directly in f32, the
/// CPU through Winograd F(4x4, 3x3); both stay ~1e-5 from diffusers on the fixture (outputs
/// up to ~6 in magnitude, 34 convolutions). 1e-3 is far above that rounding and far below
/// what a wrong weight, tap or missing bias does (1e-2 and more).
const MAX_FLOAT_DIFF: f32 = 1e-3;

fn fixture_decoder() -> TaesdDecoder {
    TaesdDecoder::load(&fixture("taesd/decoder.safetensors")).expect("fixture decoder")
}

/// The fixture decoder on the CPU and the GPU, shared: a software adapter compiles the
/// shader for each new decoder, which takes seconds.
fn fixture_pair() -> &'static (TaesdDecoder, GpuTaesd) {
    static PAIR: OnceLock<(TaesdDecoder, GpuTaesd)> = OnceLock::new();
    PAIR.get_or_init(|| {
        let cpu = fixture_decoder();
        let gpu_decoder = GpuTaesd::new(gpu(), &cpu).expect("GPU decoder");
        (cpu, gpu_decoder)
    })
}

fn randn(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
    randn_latents(shape, 1.5, seed)
}

/// GPU vs CPU float decode; returns the max difference after asserting the contract.
fn assert_matches_cpu(gpu_decoder: &GpuTaesd, cpu: &TaesdDecoder, latents: &Tensor, what: &str) {
    let expected = cpu.decode(latents).expect("CPU decode");
    let got = gpu_decoder.decode(latents).expect("GPU decode");
    let diff = max_abs_diff(&got, &expected);
    eprintln!("{what} {:?}: max |GPU - CPU| {diff:.3e}", latents.dims());
    assert!(
        diff <= MAX_FLOAT_DIFF,
        "{what} {:?}: max |GPU - CPU| {diff} > {MAX_FLOAT_DIFF}",
        latents.dims()
    );
}

#[test]
fn fixture_matches_diffusers_and_cpu() {
    let (cpu, decoder) = fixture_pair();
    assert_eq!(decoder.upscale_factor(), 8);
    let case = load_tensors("taesd/case.safetensors");
    let got = decoder.decode(&case["latents"]).expect("GPU decode");
    assert_eq!(got.dims(), &[1, 3, 144, 256]);
    let vs_diffusers = max_abs_diff(&got, &case["image"]);
    let vs_cpu = max_abs_diff(&got, &cpu.decode(&case["latents"]).expect("CPU decode"));
    eprintln!("fixture 18x32: max |GPU - diffusers| {vs_diffusers:.3e}, |GPU - CPU| {vs_cpu:.3e}");
    assert!(
        vs_diffusers <= MAX_FLOAT_DIFF,
        "vs diffusers: {vs_diffusers}"
    );
    assert!(vs_cpu <= MAX_FLOAT_DIFF, "vs CPU: {vs_cpu}");
}

/// Non-square latents, odd sizes (partial workgroups on both axes), a batch of 2, and the
/// decoder reused across sizes (the per-size plan rebuilt and reused).
#[test]
fn non_square_batches_and_size_changes_match_cpu() {
    let (cpu, decoder) = fixture_pair();
    assert_matches_cpu(decoder, cpu, &randn((2, 4, 5, 9), 1), "batch of 2");
    let tall = randn((1, 4, 7, 3), 2);
    assert_matches_cpu(decoder, cpu, &tall, "tall");
    assert_matches_cpu(decoder, cpu, &randn((1, 4, 5, 9), 3), "back to 5x9");

    // The flat vector is the same decode.
    let flat = decoder.decode_f32(&tall).expect("GPU decode_f32");
    let flat = Tensor::from_vec(flat, (1, 3, 56, 24), &Device::Cpu).expect("shape");
    assert_eq!(
        max_abs_diff(&flat, &decoder.decode(&tall).expect("decode")),
        0.0
    );
}

/// Decodes with the smallest band limit that works (many bands) and checks the image is
/// the one-band image: every pixel gets the same arithmetic in the same order, so the result
/// is identical, halo rows and image edges included. Returns the band count.
fn assert_bands_change_nothing(
    decoder: &mut GpuTaesd,
    latents: &Tensor,
    one_band: &Tensor,
) -> usize {
    let (_, _, h, w) = latents.dims4().expect("latents");
    decoder.set_band_limit(1);
    assert!(matches!(
        decoder.band_count(h, w),
        Err(GpuError::BadSize { .. })
    ));
    assert!(matches!(
        decoder.decode(latents),
        Err(GpuError::BadSize { .. })
    ));
    let mut limit = 1024;
    loop {
        decoder.set_band_limit(limit);
        if decoder.band_count(h, w).is_ok() {
            break;
        }
        limit *= 2;
    }
    let bands = decoder.band_count(h, w).expect("bands");
    let banded = decoder.decode(latents).expect("banded decode");
    assert_eq!(max_abs_diff(&banded, one_band), 0.0, "{bands} bands");
    bands
}

#[test]
fn row_bands_give_the_same_image() {
    let (cpu, _) = fixture_pair();
    let mut decoder = GpuTaesd::new(gpu(), cpu).expect("GPU decoder");
    let (h, w) = (11, 7);
    let latents = randn((1, 4, h, w), 4);
    assert_eq!(decoder.band_count(h, w).expect("bands"), 1);
    let one_band = decoder.decode(&latents).expect("one band");
    // 64 channels x 4 bytes x 56 pixels = 14336 bytes per row; 40 rows per band buffer
    // leave 40 - 2 * 4 halo rows = 32 output rows per band: 3 bands for 88 rows.
    decoder.set_band_limit(40 * 14336);
    assert_eq!(decoder.band_count(h, w).expect("bands"), 3);
    let banded = decoder.decode(&latents).expect("three bands");
    assert_eq!(max_abs_diff(&banded, &one_band), 0.0);
    assert_matches_cpu(&decoder, cpu, &latents, "three bands");
    // Too small for even one band with its halo: an error, not a panic.
    decoder.set_band_limit(1);
    assert!(matches!(
        decoder.band_count(h, w),
        Err(GpuError::BadSize { .. })
    ));
    assert!(matches!(
        decoder.decode(&latents),
        Err(GpuError::BadSize { .. })
    ));
}

#[test]
fn rgba_and_texture_output_match_cpu_rgba() {
    let ctx = gpu();
    let (cpu, decoder) = fixture_pair();
    let latents = randn((1, 4, 6, 10), 5);
    let expected = cpu.decode_rgba(&latents).expect("CPU rgba").remove(0);
    let got = decoder.decode_rgba(&latents).expect("GPU rgba");
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].width, got[0].height), (80, 48));
    let diff = max_byte_diff(&got[0], &expected);
    eprintln!("RGBA 6x10: max byte diff vs CPU {diff}");
    // Floats within ~1e-5 of the CPU's: a byte differs only where a value lands on a
    // rounding boundary, and then by one.
    assert!(diff <= 1, "RGBA vs CPU: {diff}");
    assert!(got[0].pixels.chunks_exact(4).all(|p| p[3] == 255));

    // Straight into a texture: the same bytes as the read-back.
    let target = texture(
        &ctx.device,
        (80, 48),
        wgpu::TextureFormat::Rgba8Unorm,
        wgpu::TextureUsages::COPY_DST | wgpu::TextureUsages::COPY_SRC,
    );
    decoder
        .decode_to_texture(&latents, &target)
        .expect("decode to texture");
    let in_texture = read_texture(ctx, &target).expect("read back");
    assert!(
        in_texture == got[0],
        "texture bytes differ from decode_rgba"
    );
}

/// The viewer's path: decode into the upscaler's source texture, upscale, no CPU copy of
/// the frame; the same picture as uploading the read-back frame.
#[test]
fn decoded_frame_feeds_the_bicubic_upscaler() {
    let ctx = gpu();
    let (_, decoder) = fixture_pair();
    let latents = randn((1, 4, 4, 6), 6);
    let frame = decoder.decode_rgba(&latents).expect("GPU rgba").remove(0);
    let (width, height) = (100, 70);
    let expected = upscale_to_image(ctx, &frame, width, height).expect("upscale");

    let mut upscaler = BicubicUpscaler::new(&ctx.device, OUTPUT_FORMAT);
    let source = upscaler
        .source_texture(&ctx.device, frame.width, frame.height)
        .expect("source texture");
    decoder
        .decode_to_texture(&latents, source)
        .expect("decode to texture");
    let target = create_output_texture(&ctx.device, width, height);
    let view = target.create_view(&Default::default());
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    upscaler
        .render(&ctx.device, &ctx.queue, &mut encoder, &view)
        .expect("render");
    ctx.queue.submit([encoder.finish()]);
    let got = read_texture(ctx, &target).expect("read back");
    assert!(got == expected, "upscaled GPU-decoded frame differs");
}

/// Both checkpoint layouts, and the diffusers folder (config + encoder keys), give the GPU
/// decoder the same weights.
#[test]
fn original_and_diffusers_layouts_decode_the_same() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("taesd_decoder.safetensors");
    let renamed = original_names(&load_tensors("taesd/decoder.safetensors"));
    assert!(renamed.contains_key("1.weight") && renamed.contains_key("19.bias"));
    candle_core::safetensors::save(&renamed, &path).expect("save");

    let (reference_cpu, reference) = fixture_pair();
    let original = TaesdDecoder::load(&path).expect("original layout");
    let folder = TaesdDecoder::load(&fixture("taesd")).expect("diffusers folder");
    for cpu in [&original, &folder] {
        let (a, b) = (cpu.conv_weights(), reference_cpu.conv_weights());
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(b) {
            assert_eq!((&a.weight, &a.bias), (&b.weight, &b.bias));
        }
    }
    // And the upload from the original layout decodes like the shared decoder.
    let latents = randn((1, 4, 3, 5), 7);
    let got = GpuTaesd::new(gpu(), &original)
        .expect("GPU decoder")
        .decode(&latents)
        .expect("decode");
    // Same weights, same shader: identical.
    assert_eq!(
        max_abs_diff(&got, &reference.decode(&latents).expect("decode")),
        0.0
    );
}

/// Configs the shader must tile differently: 8 channels (one group of output channels per
/// workgroup), 72 channels (two workgroups along the channels, padded), 16-channel latents,
/// a last stage without blocks, and a single stage (no upsampling at all); each in one band
/// and in many.
#[test]
fn other_configs_match_cpu() {
    let configs = [
        TaesdConfig {
            decoder_block_out_channels: vec![8; 4],
            num_decoder_blocks: vec![1, 1, 1, 1],
            ..TaesdConfig::default()
        },
        TaesdConfig {
            latent_channels: 16,
            decoder_block_out_channels: vec![72; 3],
            num_decoder_blocks: vec![1, 2, 0],
            ..TaesdConfig::default()
        },
        TaesdConfig {
            decoder_block_out_channels: vec![16],
            num_decoder_blocks: vec![2],
            out_channels: 5,
            ..TaesdConfig::default()
        },
    ];
    for (seed, config) in configs.iter().enumerate() {
        let cpu = TaesdDecoder::random(config, seed as u64).expect("random decoder");
        let mut decoder = GpuTaesd::new(gpu(), &cpu).expect("GPU decoder");
        // 16 rows: taller than two halos even for the single-stage config.
        let latents = randn((1, config.latent_channels, 16, 6), 10 + seed as u64);
        assert_matches_cpu(&decoder, &cpu, &latents, &format!("config {seed}"));
        let one_band = decoder.decode(&latents).expect("decode");
        let bands = assert_bands_change_nothing(&mut decoder, &latents, &one_band);
        assert!(bands > 1, "config {seed}: {bands} band");
    }
}

#[test]
fn bad_input_is_an_error() {
    let ctx = gpu();
    let (_, decoder) = fixture_pair();
    let wrong_channels = randn((1, 3, 4, 4), 8);
    assert!(matches!(
        decoder.decode(&wrong_channels),
        Err(GpuError::BadInput(_))
    ));
    let empty = Tensor::zeros((1, 4, 0, 4), candle_core::DType::F32, &Device::Cpu).expect("t");
    assert!(matches!(
        decoder.decode_rgba(&empty),
        Err(GpuError::BadInput(_))
    ));

    let latents = randn((1, 4, 2, 2), 9);
    let texture =
        |width, height, format, usage| texture(&ctx.device, (width, height), format, usage);
    let copy_dst = wgpu::TextureUsages::COPY_DST;
    let rgba = wgpu::TextureFormat::Rgba8Unorm;
    for (target, what) in [
        (texture(17, 16, rgba, copy_dst), "wrong size"),
        (
            texture(16, 16, wgpu::TextureFormat::Rgba16Float, copy_dst),
            "wrong format",
        ),
        (
            texture(16, 16, rgba, wgpu::TextureUsages::TEXTURE_BINDING),
            "no COPY_DST",
        ),
    ] {
        assert!(
            matches!(
                decoder.decode_to_texture(&latents, &target),
                Err(GpuError::BadTarget(_))
            ),
            "{what}"
        );
    }
    let batch = randn((2, 4, 2, 2), 10);
    let target = texture(16, 16, rgba, copy_dst);
    assert!(matches!(
        decoder.decode_to_texture(&batch, &target),
        Err(GpuError::BadInput(_))
    ));
    // A five-channel decoder has no RGBA output.
    let config = TaesdConfig {
        decoder_block_out_channels: vec![8],
        num_decoder_blocks: vec![0],
        out_channels: 5,
        ..TaesdConfig::default()
    };
    let five = GpuTaesd::new(ctx, &TaesdDecoder::random(&config, 0).expect("decoder"))
        .expect("GPU decoder");
    assert!(matches!(
        five.decode_rgba(&latents),
        Err(GpuError::BadInput(_))
    ));
}
