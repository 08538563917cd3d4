//! How visible the lines between tiles are: the mean jump between the two pixels either side
//! of the given lines, over the mean jump between neighbouring pixels elsewhere. About 1
//! where nothing marks the lines; well above 1 at a seam.

use crate::frame::RgbaImage;

/// The seam ratio of `image` at the vertical lines `columns` (between pixel `c - 1` and
/// `c`) and horizontal lines `rows` (between rows `r - 1` and `r`), over the RGB channels.
/// `None` when there is no line inside the image or no other neighbour pair.
pub fn seam_ratio(image: &RgbaImage, columns: &[u32], rows: &[u32]) -> Option<f64> {
    let (w, h) = (image.width as usize, image.height as usize);
    let px = |x: usize, y: usize| &image.pixels[(y * w + x) * 4..(y * w + x) * 4 + 3];
    let jump = |a: &[u8], b: &[u8]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(p, q)| f64::from(p.abs_diff(*q)))
            .sum::<f64>()
            / 3.0
    };
    let (mut seam, mut seam_n, mut rest, mut rest_n) = (0f64, 0usize, 0f64, 0usize);
    for y in 0..h {
        for x in 1..w {
            let j = jump(px(x - 1, y), px(x, y));
            if columns.contains(&(x as u32)) {
                (seam, seam_n) = (seam + j, seam_n + 1);
            } else {
                (rest, rest_n) = (rest + j, rest_n + 1);
            }
        }
    }
    for y in 1..h {
        let on_line = rows.contains(&(y as u32));
        for x in 0..w {
            let j = jump(px(x, y - 1), px(x, y));
            if on_line {
                (seam, seam_n) = (seam + j, seam_n + 1);
            } else {
                (rest, rest_n) = (rest + j, rest_n + 1);
            }
        }
    }
    if seam_n == 0 || rest_n == 0 {
        return None;
    }
    let (seam_mean, rest_mean) = (seam / seam_n as f64, rest / rest_n as f64);
    Some(match (rest_mean > 0.0, seam_mean > 0.0) {
        (true, _) => seam_mean / rest_mean,
        // Flat everywhere else: no seam if flat across the lines too.
        (false, false) => 1.0,
        (false, true) => f64::INFINITY,
    })
}
