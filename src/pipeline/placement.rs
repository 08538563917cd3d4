//! Where a keyframe pair's next diffused position goes: in the middle of the largest gap
//! between the places already fixed (the pair's keyframes and the positions diffused so
//! far), the gap measured as the mean absolute difference of the two fixed places' decoded
//! frames. Bisecting the largest gap spends real samples where the slerp would have to
//! bridge the most change.

use crate::frame::RgbaImage;

/// Mean absolute difference of two frames' colour bytes (alpha left out), in levels of
/// 0..=255; infinite when their sizes differ (no comparison: treat as far apart).
pub fn mean_abs_diff(a: &RgbaImage, b: &RgbaImage) -> f64 {
    if (a.width, a.height) != (b.width, b.height) || a.pixels.is_empty() {
        return f64::INFINITY;
    }
    let sum: u64 = a
        .pixels
        .chunks_exact(4)
        .zip(b.pixels.chunks_exact(4))
        .map(|(p, q)| (0..3).map(|c| p[c].abs_diff(q[c]) as u64).sum::<u64>())
        .sum();
    sum as f64 / (3 * a.width as u64 * a.height as u64) as f64
}

/// The step (of a pair walked in `fixed_steps.last()` steps) to diffuse next: the middle,
/// rounded down, of the largest gap with a position inside it. `fixed_steps` are the fixed
/// places in order (the pair's keyframes, 0 and `steps_between`, included) and `gaps[i]`
/// measures the gap from `fixed_steps[i]` to `fixed_steps[i + 1]`. Equal gaps: the
/// earliest. `None` when every position of the pair is fixed.
pub fn next_step(fixed_steps: &[usize], gaps: &[f64]) -> Option<usize> {
    debug_assert_eq!(gaps.len() + 1, fixed_steps.len());
    let mut best: Option<(usize, f64)> = None;
    for (i, pair) in fixed_steps.windows(2).enumerate() {
        if pair[1] < pair[0] + 2 {
            continue;
        }
        let gap = gaps[i];
        if best.is_none_or(|(_, largest)| gap > largest) {
            best = Some((i, gap));
        }
    }
    best.map(|(i, _)| (fixed_steps[i] + fixed_steps[i + 1]) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_gap_with_room_is_bisected() {
        // 0..4 is the largest gap; 4..5 is larger still but has no position inside.
        assert_eq!(next_step(&[0, 4, 5, 8], &[10.0, 50.0, 3.0]), Some(2));
        assert_eq!(next_step(&[0, 4, 8], &[1.0, 2.0]), Some(6));
        // Ties go to the earliest; an odd gap rounds down.
        assert_eq!(next_step(&[0, 3, 6], &[2.0, 2.0]), Some(1));
        assert_eq!(next_step(&[0, 1, 2], &[9.0, 9.0]), None);
    }

    #[test]
    fn the_difference_is_the_mean_over_colour_bytes() {
        let mut a = RgbaImage::new(2, 1);
        let b = RgbaImage::new(2, 1);
        a.pixels[0] = 30; // one byte of six, alpha not counted
        a.pixels[3] = 200;
        assert_eq!(mean_abs_diff(&a, &b), 5.0);
        assert_eq!(mean_abs_diff(&a, &RgbaImage::new(1, 1)), f64::INFINITY);
    }
}
