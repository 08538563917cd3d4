//! In-between frames: exact values for k = 0, 1, 3 and the fixed-point arithmetic.

use dreamwalk::frame::RgbaImage;
use dreamwalk::pipeline::inbetween::{auto_inbetweens, blend, Inbetweens};

fn image(values: &[u8]) -> RgbaImage {
    RgbaImage::from_pixels(values.len() as u32 / 4, 1, values.to_vec()).unwrap()
}

#[test]
fn one_inbetween_is_the_rounded_mean() {
    let a = image(&[0, 10, 255, 255, 1, 2, 3, 255]);
    let b = image(&[255, 11, 0, 255, 2, 2, 4, 255]);
    // round((a+b)/2), halves up: 127.5 -> 128, 10.5 -> 11.
    assert_eq!(
        blend(&a, &b, 0, 1).pixels,
        vec![128, 11, 128, 255, 2, 2, 4, 255]
    );
}

#[test]
fn three_inbetweens_step_by_quarters() {
    let a = image(&[0, 100, 255, 255]);
    let b = image(&[255, 102, 0, 255]);
    let frames: Vec<Vec<u8>> = (0..3).map(|j| blend(&a, &b, j, 3).pixels).collect();
    // a = 1/4, 2/4, 3/4: 63.75 -> 64, 100.5 -> 101, 191.25 -> 191 ...
    assert_eq!(frames[0], vec![64, 101, 191, 255]);
    assert_eq!(frames[1], vec![128, 101, 128, 255]);
    assert_eq!(frames[2], vec![191, 102, 64, 255]);
}

#[test]
fn zero_inbetweens_means_none() {
    assert_eq!("0".parse::<Inbetweens>().unwrap().count(100.0, 30.0), 0);
}

#[test]
fn fixed_point_blend_equals_exact_rounding_for_every_count() {
    // Every (j, k) with k <= 15, every prev value, a spread of next values.
    let prev: Vec<u8> = (0..=255u8).flat_map(|v| [v, v, v, v]).collect();
    for next_value in (0..=255u32).step_by(3) {
        let next = vec![next_value as u8; prev.len()];
        let (a, b) = (image(&prev), image(&next));
        for k in 1..=15usize {
            for j in 0..k {
                let got = blend(&a, &b, j, k);
                for (i, &g) in got.pixels.iter().enumerate() {
                    let (p, n) = (prev[i] as u32, next_value);
                    let (wp, wn, d) = ((k - j) as u32, (j + 1) as u32, (k + 1) as u32);
                    let exact = (2 * (wp * p + wn * n) + d) / (2 * d);
                    assert_eq!(g as u32, exact, "j={j} k={k} p={p} n={n}");
                }
            }
        }
    }
}

#[test]
fn auto_fills_the_display_while_decoding() {
    // 100 ms per decode at 30 fps: 3 frames per decode -> 2 in-betweens.
    assert_eq!(auto_inbetweens(100.0, 30.0), 2);
    assert_eq!(auto_inbetweens(10.0, 30.0), 0);
    assert_eq!(auto_inbetweens(5000.0, 30.0), 15);
    assert_eq!("auto".parse::<Inbetweens>().unwrap(), Inbetweens::Auto);
    assert!("16".parse::<Inbetweens>().is_err());
}
