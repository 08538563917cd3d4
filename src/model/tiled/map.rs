//! The per-tile map of a tiled run (`--noise-map`): each pixel of the output coloured by the
//! tile that owns it (the one weighted most there), red for the share of the steps that tile
//! ran, green for its last noise estimate against the noisiest tile's, tile borders blue;
//! and the same figures as text for the PNG's comment.

use super::denoise::TileReport;
use super::layout::TileLayout;
use crate::frame::RgbaImage;

/// The map of `reports` (one per tile of `layout`, of a run of `steps` steps) at `scale`
/// image pixels per latent pixel: the size of the decoded image.
pub fn noise_map(
    layout: &TileLayout,
    reports: &[TileReport],
    steps: usize,
    scale: usize,
) -> RgbaImage {
    let (h, w) = layout.latent_hw();
    let owners: Vec<usize> = (0..h * w).map(|i| layout.owner(i / w, i % w)).collect();
    let max_noise = reports.iter().filter_map(|r| r.noise).fold(0f64, f64::max);
    let colour = |tile: usize| -> [u8; 3] {
        let report = &reports[tile];
        let share = report.steps_run as f64 / steps.max(1) as f64;
        let noise = match (report.noise, max_noise > 0.0) {
            (Some(noise), true) => noise / max_noise,
            _ => 0.0,
        };
        [byte(share), byte(noise), 0]
    };
    let (width, height) = ((w * scale) as u32, (h * scale) as u32);
    let mut image = RgbaImage::new(width, height);
    let owner_at = |py: usize, px: usize| owners[(py / scale) * w + px / scale];
    for py in 0..height as usize {
        for px in 0..width as usize {
            let owner = owner_at(py, px);
            // A border where the next pixel right or below belongs to another tile.
            let border = (px + 1 < width as usize && owner_at(py, px + 1) != owner)
                || (py + 1 < height as usize && owner_at(py + 1, px) != owner);
            let [r, g, b] = colour(owner);
            let at = (py * width as usize + px) * 4;
            image.pixels[at..at + 3].copy_from_slice(&[r, g, if border { 255 } else { b }]);
        }
    }
    image
}

fn byte(v: f64) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// One line per tile: where it lies, the steps it ran, its last noise estimate.
pub fn describe_tiles(reports: &[TileReport], steps: usize) -> String {
    reports
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let noise = r.noise.map_or("no estimate (under 3x3)".to_string(), |n| {
                format!("noise {n:.5}")
            });
            format!(
                "tile {i} (latent {}): {}/{steps} steps, {noise}",
                r.rect, r.steps_run
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
