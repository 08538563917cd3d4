//! Slerp/lerp against `slerp/case.safetensors`, and the shape of walk paths.

use candle_core::{Device, Tensor};
use dreamwalk::walk::{slerp, Easing, Interp, LoopMode, Walk, WalkSettings};

use crate::support::fixtures::{load_tensors, max_abs_diff};

#[test]
fn slerp_matches_reference_in_both_branches() {
    let case = load_tensors("slerp/case.safetensors");
    let t = case["t"].to_vec1::<f32>().unwrap();
    for (v1, out) in [("v1", "out"), ("v1_near", "out_near")] {
        for (i, &ti) in t.iter().enumerate() {
            let ours = slerp(ti as f64, &case["v0"], &case[v1]).unwrap();
            let expected = case[out].get(i).unwrap();
            // 1e-6: the bound; the reference is numpy in f32, we accumulate in f64.
            let diff = max_abs_diff(&ours, &expected);
            assert!(diff <= 1e-6, "{out}[{i}] (t = {ti}): max |diff| {diff}");
        }
    }
}

#[test]
fn lerp_walk_is_the_straight_line() {
    let a = Tensor::new(&[[0f32, 2.0], [4.0, -2.0]], &Device::Cpu).unwrap();
    let b = Tensor::new(&[[4f32, 2.0], [0.0, 2.0]], &Device::Cpu).unwrap();
    let walk = Walk::new(
        vec![a, b],
        WalkSettings {
            steps_between: 4,
            interp: Interp::Lerp,
            easing: Easing::Linear,
            loop_mode: LoopMode::Once,
        },
    );
    let mid = walk.latents_at(&walk.position(2)).unwrap();
    assert_eq!(
        mid.to_vec2::<f32>().unwrap(),
        vec![vec![2.0, 2.0], vec![2.0, 0.0]]
    );
}

fn walk(keyframes: usize, steps: usize, loop_mode: LoopMode) -> Walk {
    let latents = (0..keyframes)
        .map(|i| Tensor::full(i as f32, (1, 4, 2, 2), &Device::Cpu).unwrap())
        .collect();
    Walk::new(
        latents,
        WalkSettings {
            steps_between: steps,
            interp: Interp::Slerp,
            easing: Easing::Linear,
            loop_mode,
        },
    )
}

#[test]
fn once_visits_every_position_then_ends() {
    let w = walk(3, 4, LoopMode::Once);
    assert_eq!(w.path_len(), 9);
    let seq: Vec<_> = (0..12).map_while(|i| w.path_index_at(i)).collect();
    assert_eq!(seq, (0..9).collect::<Vec<_>>());
    let last = w.position(8);
    assert_eq!((last.segment, last.t), (1, 1.0));
    assert_eq!(w.frames_in_laps(1), 9);
}

#[test]
fn pingpong_bounces_without_repeating_ends() {
    let w = walk(2, 3, LoopMode::PingPong);
    let seq: Vec<_> = (0..9).map(|i| w.path_index_at(i).unwrap()).collect();
    assert_eq!(seq, vec![0, 1, 2, 3, 2, 1, 0, 1, 2]);
    assert_eq!(w.frames_in_laps(1), 7);
}

#[test]
fn endless_circles_back_to_the_first_keyframe() {
    let w = walk(2, 2, LoopMode::Endless);
    assert_eq!(w.path_len(), 4);
    let seq: Vec<_> = (0..6).map(|i| w.path_index_at(i).unwrap()).collect();
    assert_eq!(seq, vec![0, 1, 2, 3, 0, 1]);
    // Position 3 walks from keyframe 1 back toward keyframe 0.
    let p = w.position(3);
    assert_eq!((p.segment, p.t), (1, 0.5));
}

#[test]
fn easing_in_out_is_slow_at_the_ends() {
    assert_eq!(Easing::InOut.apply(0.0), 0.0);
    assert!((Easing::InOut.apply(0.5) - 0.5).abs() < 1e-12);
    assert!((Easing::InOut.apply(1.0) - 1.0).abs() < 1e-12);
    assert!(Easing::InOut.apply(0.1) < 0.1);
    assert!(Easing::InOut.apply(0.9) > 0.9);
}

#[test]
fn carry_over_keeps_the_place_when_steps_change() {
    let old = walk(3, 4, LoopMode::Once);
    let new = walk(3, 8, LoopMode::Once);
    // Index 6 of the old walk: segment 1, t = 0.5 -> index 12 of the new one.
    assert_eq!(old.carry_over(6, &new), 12);
}
