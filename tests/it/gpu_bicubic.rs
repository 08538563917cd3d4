//! The GPU bicubic upscaler against the CPU reference, fast_image_resize's Catmull-Rom.
//!
//! These tests need a GPU adapter and FAIL without one: on machines without a GPU, install
//! the software Vulkan driver (Debian: `mesa-vulkan-drivers libvulkan1`).

use std::time::Instant;

use dreamwalk::frame::RgbaImage;
use dreamwalk::gpu::{
    create_output_texture, read_texture, upscale_to_image, BicubicUpscaler, GpuError, OUTPUT_FORMAT,
};
use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use rand::{Rng, SeedableRng};

use crate::support::fixtures::max_byte_diff;
use crate::support::gpu::{shared_gpu_context as gpu, texture};

/// The contract: every channel within 1 of the CPU. The shader uses the CPU's own
/// fixed-point weights and rounding, so 0 is what we measure; 1 leaves room for a driver
/// that converts float to unorm a hair differently.
const MAX_CHANNEL_DIFF: u8 = 1;

/// The sizes the viewer meets, in small: 2x, non-integer scales, and 3.75x (1024 -> 3840).
const CASES: [((u32, u32), (u32, u32)); 4] = [
    ((16, 9), (32, 18)),
    ((7, 5), (23, 17)),
    ((37, 21), (100, 64)),
    ((64, 36), (240, 135)),
];

fn cpu_resize(src: &RgbaImage, width: u32, height: u32) -> RgbaImage {
    let src_image = Image::from_vec_u8(src.width, src.height, src.pixels.clone(), PixelType::U8x4)
        .expect("test image has 4 bytes per pixel");
    let mut dst_image = Image::new(width, height, PixelType::U8x4);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom))
        .use_alpha(false);
    Resizer::new()
        .resize(&src_image, &mut dst_image, &options)
        .expect("CPU resize");
    RgbaImage::from_pixels(width, height, dst_image.into_vec()).expect("CPU output size")
}

fn random_image(width: u32, height: u32, seed: u64) -> RgbaImage {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pixels = (0..width * height * 4)
        .map(|_| rng.random::<u8>())
        .collect();
    RgbaImage::from_pixels(width, height, pixels).expect("size")
}

/// Smooth ramps on every channel, alpha included (use_alpha(false): no premultiplication).
fn gradient_image(width: u32, height: u32) -> RgbaImage {
    let ramp = |i: u32, n: u32| (i * 255 / (n - 1).max(1)) as u8;
    let mut pixels = Vec::with_capacity((width * height * 4) as usize);
    for y in 0..height {
        for x in 0..width {
            pixels.extend_from_slice(&[
                ramp(x, width),
                ramp(y, height),
                ramp(x + y, width + height - 1),
                255 - ramp(x, width) / 2,
            ]);
        }
    }
    RgbaImage::from_pixels(width, height, pixels).expect("size")
}

fn assert_matches_cpu(src: &RgbaImage, width: u32, height: u32, what: &str) -> u8 {
    let expected = cpu_resize(src, width, height);
    let got = upscale_to_image(gpu(), src, width, height).expect("GPU upscale");
    let diff = max_byte_diff(&got, &expected);
    eprintln!(
        "{what} {}x{} -> {width}x{height}: max diff {diff}",
        src.width, src.height
    );
    assert!(
        diff <= MAX_CHANNEL_DIFF,
        "{what} {}x{} -> {width}x{height}: max channel diff {diff} > {MAX_CHANNEL_DIFF}",
        src.width,
        src.height
    );
    diff
}

#[test]
fn random_pixels_match_cpu() {
    for (seed, ((w, h), (out_w, out_h))) in CASES.into_iter().enumerate() {
        assert_matches_cpu(&random_image(w, h, seed as u64), out_w, out_h, "random");
    }
}

#[test]
fn gradients_match_cpu() {
    for ((w, h), (out_w, out_h)) in CASES {
        assert_matches_cpu(&gradient_image(w, h), out_w, out_h, "gradient");
    }
}

/// One axis unchanged (the CPU skips that pass), same size (the CPU copies), tiny sources
/// (the window clipped on both sides), and a downscale (wider kernel).
#[test]
fn edge_sizes_match_cpu() {
    let cases = [
        ((16, 9), (16, 30)),
        ((16, 9), (40, 9)),
        ((16, 9), (16, 9)),
        ((1, 1), (5, 3)),
        ((2, 3), (9, 11)),
        ((40, 30), (13, 11)),
    ];
    for (seed, ((w, h), (out_w, out_h))) in cases.into_iter().enumerate() {
        assert_matches_cpu(&random_image(w, h, 100 + seed as u64), out_w, out_h, "edge");
    }
}

#[test]
fn constant_image_stays_constant() {
    let color = [13u8, 200, 77, 255];
    let src = RgbaImage::from_pixels(37, 21, color.repeat(37 * 21)).expect("size");
    let got = upscale_to_image(gpu(), &src, 100, 64).expect("GPU upscale");
    assert!(
        got.pixels.chunks_exact(4).all(|p| p == color),
        "a constant image must stay exactly constant"
    );
}

/// The viewer's path: one upscaler, frames and output sizes changing between draws.
#[test]
fn upscaler_reuse_across_frames_and_sizes() {
    let ctx = gpu();
    let mut upscaler = BicubicUpscaler::new(&ctx.device, OUTPUT_FORMAT);
    let steps = [
        (random_image(16, 9, 7), (32, 18)),
        (random_image(16, 9, 8), (32, 18)),
        (random_image(16, 9, 9), (61, 40)),
        (random_image(37, 21, 10), (61, 40)),
    ];
    for (frame, (width, height)) in &steps {
        upscaler
            .upload(&ctx.device, &ctx.queue, frame)
            .expect("upload");
        let target = create_output_texture(&ctx.device, *width, *height);
        let view = target.create_view(&Default::default());
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        upscaler
            .render(&ctx.device, &ctx.queue, &mut encoder, &view)
            .expect("render");
        ctx.queue.submit([encoder.finish()]);
        let got = read_texture(ctx, &target).expect("readback");
        let diff = max_byte_diff(&got, &cpu_resize(frame, *width, *height));
        assert!(diff <= MAX_CHANNEL_DIFF, "step to {width}x{height}: {diff}");
    }
}

/// An sRGB target gets decoded values, so the stored bytes are still the frame's bytes.
#[test]
fn srgb_target_keeps_bytes() {
    let ctx = gpu();
    let frame = random_image(37, 21, 11);
    let (width, height) = (100, 64);
    let mut upscaler = BicubicUpscaler::new(&ctx.device, wgpu::TextureFormat::Rgba8UnormSrgb);
    upscaler
        .upload(&ctx.device, &ctx.queue, &frame)
        .expect("upload");
    let target = texture(
        &ctx.device,
        (width, height),
        wgpu::TextureFormat::Rgba8UnormSrgb,
        wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
    );
    let view = target.create_view(&Default::default());
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    upscaler
        .render(&ctx.device, &ctx.queue, &mut encoder, &view)
        .expect("render");
    ctx.queue.submit([encoder.finish()]);
    let got = read_texture(ctx, &target).expect("readback");
    let diff = max_byte_diff(&got, &cpu_resize(&frame, width, height));
    eprintln!("sRGB target: max diff {diff}");
    // Decode in the shader, encode in hardware: f32 round trip, at most one step off.
    assert!(diff <= 1, "sRGB target: max channel diff {diff}");
}

#[test]
fn bad_sizes_are_errors() {
    let ctx = gpu();
    let frame = random_image(4, 4, 12);
    assert!(matches!(
        upscale_to_image(ctx, &frame, 0, 10),
        Err(GpuError::BadSize { .. })
    ));
    let too_big = ctx.device.limits().max_texture_dimension_2d + 1;
    assert!(matches!(
        upscale_to_image(ctx, &frame, too_big, 10),
        Err(GpuError::BadSize { .. })
    ));
    let mut broken = frame.clone();
    broken.pixels.pop();
    let mut upscaler = BicubicUpscaler::new(&ctx.device, OUTPUT_FORMAT);
    assert!(matches!(
        upscaler.upload(&ctx.device, &ctx.queue, &broken),
        Err(GpuError::BadSize { .. })
    ));
}

/// The real size, 1024x576 -> 3840x2160, once: exact against the CPU, with timings.
#[test]
fn full_size_frame_matches_cpu() {
    let ctx = gpu();
    let frame = gradient_image(1024, 576);
    let frame = RgbaImage {
        // Noise on top of the ramps so every tap matters.
        pixels: frame
            .pixels
            .iter()
            .zip(&random_image(1024, 576, 13).pixels)
            .map(|(&g, &r)| g.wrapping_add(r / 8))
            .collect(),
        ..frame
    };
    let (width, height) = (3840, 2160);

    let start = Instant::now();
    let expected = cpu_resize(&frame, width, height);
    let cpu_ms = start.elapsed().as_secs_f64() * 1e3;

    let mut upscaler = BicubicUpscaler::new(&ctx.device, OUTPUT_FORMAT);
    let target = create_output_texture(&ctx.device, width, height);
    let view = target.create_view(&Default::default());
    let mut draw = || {
        upscaler
            .upload(&ctx.device, &ctx.queue, &frame)
            .expect("upload");
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        upscaler
            .render(&ctx.device, &ctx.queue, &mut encoder, &view)
            .expect("render");
        ctx.queue.submit([encoder.finish()]);
        ctx.device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("poll");
    };
    draw(); // builds the tables and compiles the pipelines' shaders on some drivers
    let start = Instant::now();
    draw();
    let gpu_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    let got = read_texture(ctx, &target).expect("readback");
    let readback_ms = start.elapsed().as_secs_f64() * 1e3;

    let diff = max_byte_diff(&got, &expected);
    eprintln!(
        "1024x576 -> 3840x2160 on {}: max diff {diff}; CPU resize {cpu_ms:.1} ms, \
         GPU upload+draw {gpu_ms:.1} ms, readback {readback_ms:.1} ms",
        ctx.adapter_name()
    );
    assert!(
        diff <= MAX_CHANNEL_DIFF,
        "4K frame: max channel diff {diff}"
    );
}
