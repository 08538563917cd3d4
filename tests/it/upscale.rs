//! CPU bicubic upscale: sizes, constants, and a 2x case by value.

use dreamwalk::frame::RgbaImage;
use dreamwalk::upscale::{bicubic, BicubicResizer};

#[test]
fn output_has_the_asked_size() {
    let src = RgbaImage::new(32, 18);
    let out = bicubic(&src, 120, 67);
    assert_eq!(
        (out.width, out.height, out.pixels.len()),
        (120, 67, 120 * 67 * 4)
    );
}

#[test]
fn a_constant_image_stays_constant() {
    let mut src = RgbaImage::new(17, 9);
    for p in src.pixels.chunks_exact_mut(4) {
        p.copy_from_slice(&[37, 200, 3, 255]);
    }
    let out = bicubic(&src, 64, 36);
    assert!(out.pixels.chunks_exact(4).all(|p| p == [37, 200, 3, 255]));
}

/// Catmull-Rom (a = -0.5) at 2x, computed here in f64 from the definition: output pixel
/// centre x maps to source (x + 0.5) / 2 - 0.5; taps at offsets -0.25/0.75 give the weights
/// below; at the borders the window is clipped to the image and renormalised.
#[test]
fn two_x_row_matches_catmull_rom_by_value() {
    let row = [0u8, 100, 200, 50];
    let mut src = RgbaImage::new(4, 1);
    for (i, &v) in row.iter().enumerate() {
        src.pixels[i * 4..i * 4 + 3].copy_from_slice(&[v, v, v]);
    }
    let out = bicubic(&src, 8, 1);
    let cubic = |x: f64| {
        let a = -0.5;
        let x = x.abs();
        if x < 1.0 {
            (a + 2.0) * x.powi(3) - (a + 3.0) * x.powi(2) + 1.0
        } else if x < 2.0 {
            a * x.powi(3) - 5.0 * a * x.powi(2) + 8.0 * a * x - 4.0 * a
        } else {
            0.0
        }
    };
    for x in 0..8 {
        let centre = (x as f64 + 0.5) / 2.0 - 0.5;
        let (mut sum, mut wsum) = (0.0, 0.0);
        for (i, &value) in row.iter().enumerate().take(4) {
            let w = cubic(i as f64 - centre);
            sum += w * value as f64;
            wsum += w;
        }
        let expected = (sum / wsum).round().clamp(0.0, 255.0) as i32;
        let got = out.pixels[x * 4] as i32;
        // ±1: fast_image_resize works in fixed point.
        assert!(
            (got - expected).abs() <= 1,
            "x={x}: got {got}, expected {expected}"
        );
    }
}

/// Pixels from a small xorshift generator: noise has every value and sharp edges, the
/// worst case for clamping and rounding.
fn noise_image(width: u32, height: u32, seed: u64) -> RgbaImage {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let pixels = (0..width as usize * height as usize * 4)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    RgbaImage::from_pixels(width, height, pixels).unwrap()
}

/// Enlarging on every axis (and keeping one axis) runs on the AVX2 kernel where the CPU has
/// it; the bytes must equal fast_image_resize's, which the GPU shader and the recorder are
/// checked against. Odd sizes exercise the 8-pixel groups' tails and the 32-byte rows' tails.
#[test]
fn fast_kernel_equals_fast_image_resize_byte_for_byte() {
    let cases = [
        ((1024, 576), (3840, 2160)),
        ((1024, 576), (1920, 1080)),
        ((512, 512), (1024, 1024)),
        ((37, 23), (129, 61)),
        ((4, 4), (9, 7)),
        ((5, 9), (5, 31)),
        ((13, 8), (50, 8)),
        ((64, 36), (67, 37)),
        ((7, 300), (1001, 301)),
        ((640, 360), (641, 1079)),
    ];
    let mut fast = BicubicResizer::new();
    let mut reference = BicubicResizer::reference();
    for (seed, ((sw, sh), (dw, dh))) in cases.into_iter().enumerate() {
        let src = noise_image(sw, sh, seed as u64);
        let got = fast.resize(&src, dw, dh);
        let expected = reference.resize(&src, dw, dh);
        assert_eq!((got.width, got.height), (dw, dh));
        let first_difference = got
            .pixels
            .iter()
            .zip(&expected.pixels)
            .position(|(a, b)| a != b);
        assert_eq!(
            first_difference, None,
            "{sw}x{sh} -> {dw}x{dh}: first different byte"
        );
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            assert!(
                fast.uses_fast_kernel((sw, sh), (dw, dh)),
                "{sw}x{sh} -> {dw}x{dh}"
            );
        }
    }
}

/// Shrinking and tiny sources fall back to fast_image_resize: still the same bytes.
#[test]
fn shrinking_and_tiny_sources_use_fast_image_resize() {
    let mut fast = BicubicResizer::new();
    let mut reference = BicubicResizer::reference();
    for ((sw, sh), (dw, dh)) in [
        ((3840, 2160), (1024, 576)),
        ((3, 2), (40, 30)),
        ((100, 50), (300, 20)),
    ] {
        assert!(!fast.uses_fast_kernel((sw, sh), (dw, dh)));
        let src = noise_image(sw, sh, 7);
        assert!(fast.resize(&src, dw, dh) == reference.resize(&src, dw, dh));
    }
}

/// A shared output is reused once everyone else has dropped it, never while held.
#[test]
fn shared_outputs_are_reused_only_when_released() {
    let mut resizer = BicubicResizer::new();
    let (a, b) = (noise_image(16, 9, 1), noise_image(16, 9, 2));
    let first = resizer.resize_shared(&a, 64, 36);
    let first_buffer = first.pixels.as_ptr();
    let expected_a = bicubic(&a, 64, 36);
    // Held: the next frame must go elsewhere, and the held one keep its pixels.
    let second = resizer.resize_shared(&b, 64, 36);
    assert_ne!(second.pixels.as_ptr(), first_buffer);
    assert!(*first == expected_a);
    assert!(*second == bicubic(&b, 64, 36));
    drop(first);
    let third = resizer.resize_shared(&a, 64, 36);
    assert_eq!(
        third.pixels.as_ptr(),
        first_buffer,
        "the released buffer is reused"
    );
    assert!(*third == expected_a);
    // Another size gets its own frame of that size.
    let other = resizer.resize_shared(&a, 32, 18);
    assert!(*other == bicubic(&a, 32, 18));
}
