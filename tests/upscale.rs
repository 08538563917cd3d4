//! CPU bicubic upscale: sizes, constants, and a 2x case by value.

use dreamwalk::frame::RgbaImage;
use dreamwalk::upscale::bicubic;

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
