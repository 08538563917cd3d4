//! The walk's diffused in-betweens, made on the endpoint thread: every keyframe pair's
//! [`SegmentRefiner`], asked in turn (the pair with the fewest positions first), until each
//! pair has the count [`Settings::diffuse`](super::Settings::diffuse) asks for. A render
//! makes them all before its walk starts (its frames are then a function of its settings);
//! the viewer makes them while the walk plays and hands each to the decode stage, which
//! puts it in the walk where the walk passes next.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::Tensor;

use super::refine::{RefineGrid, SegmentRefiner};
use super::Shared;
use crate::model::{EndpointError, EndpointRequest, Engine, SamplingProgress};
use crate::walk::{FixedLatents, LoopMode, WalkSettings};

/// A diffused position for the decode stage.
#[derive(Clone, Debug)]
pub(super) struct Refinement {
    /// The keyframes' generation it belongs to.
    pub(super) generation: u64,
    /// The grid it was placed on.
    pub(super) grid: RefineGrid,
    /// Its pair's n-th position (0-based): the walk uses the first `diffuse` of each pair.
    pub(super) rank: usize,
    pub(super) segment: usize,
    /// The walk's linear time in the pair.
    pub(super) t: f64,
    pub(super) latents: Tensor,
}

/// The pairs a walk with these settings has, and the positions each should get.
pub(super) fn wanted(keyframes: usize, walk: &WalkSettings, diffuse: usize) -> (usize, usize) {
    let pairs = match walk.loop_mode {
        LoopMode::Endless if keyframes > 1 => keyframes,
        _ => keyframes.saturating_sub(1),
    };
    (pairs, diffuse.min(walk.steps_between.saturating_sub(1)))
}

/// The refiners of one generation's keyframes.
pub(super) struct WalkRefiner {
    generation: u64,
    request: EndpointRequest,
    keyframes: Vec<Tensor>,
    pairs: BTreeMap<usize, SegmentRefiner>,
    /// Only these pairs are diffused (a segment of a render: the pairs its frames lie in).
    only: Option<BTreeSet<usize>>,
}

impl WalkRefiner {
    pub(super) fn new(generation: u64, request: EndpointRequest, keyframes: Vec<Tensor>) -> Self {
        Self {
            generation,
            request,
            keyframes,
            pairs: BTreeMap::new(),
            only: None,
        }
    }

    /// This refiner diffusing only `pairs` (each pair's positions depend on that pair
    /// alone, so they are those of a refiner of every pair).
    pub(super) fn only_pairs(mut self, pairs: BTreeSet<usize>) -> Self {
        self.only = Some(pairs);
        self
    }

    /// The pairs diffused, of a walk with `pairs` pairs.
    fn diffused_pairs(&self, pairs: usize) -> impl Iterator<Item = usize> + '_ {
        (0..pairs).filter(|s| self.only.as_ref().is_none_or(|only| only.contains(s)))
    }

    /// `(made, asked)` over every pair, for `walk` and `diffuse`.
    pub(super) fn counts(&self, walk: &WalkSettings, diffuse: usize) -> (usize, usize) {
        let (pairs, each) = wanted(self.keyframes.len(), walk, diffuse);
        let grid = grid_of(walk);
        let made = self
            .diffused_pairs(pairs)
            .map(|s| match self.pairs.get(&s) {
                Some(r) if r.grid() == grid => r.made().len().min(each),
                _ => 0,
            })
            .sum();
        (made, self.diffused_pairs(pairs).count() * each)
    }

    /// Diffuses one more position (in the pair with the fewest), or `Ok(None)` when every
    /// pair has what `walk` and `diffuse` ask. A changed grid starts the pairs over.
    pub(super) fn step(
        &mut self,
        engine: &dyn Engine,
        walk: &WalkSettings,
        diffuse: usize,
        progress: &mut dyn FnMut(SamplingProgress) -> bool,
    ) -> Result<Option<(Refinement, f64)>, EndpointError> {
        let (pairs, each) = wanted(self.keyframes.len(), walk, diffuse);
        let grid = grid_of(walk);
        self.pairs.retain(|_, r| r.grid() == grid);
        let made = |s: usize| self.pairs.get(&s).map_or(0, |r| r.made().len());
        let Some(segment) = self
            .diffused_pairs(pairs)
            .filter(|&s| made(s) < each)
            .min_by_key(|&s| made(s))
        else {
            return Ok(None);
        };
        let refiner = match self.pairs.entry(segment) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(SegmentRefiner::new(engine, &self.keyframes, segment, grid)?)
            }
        };
        let rank = refiner.made().len();
        let Some(position) = refiner.diffuse_next(engine, &self.request, progress)? else {
            return Ok(None);
        };
        let refinement = Refinement {
            generation: self.generation,
            grid,
            rank,
            segment,
            t: position.t,
            latents: position.latents.clone(),
        };
        Ok(Some((refinement, position.seconds)))
    }
}

fn grid_of(walk: &WalkSettings) -> RefineGrid {
    RefineGrid {
        steps_between: walk.steps_between,
        easing: walk.easing,
    }
}

/// Makes the positions the settings ask for, one at a time, handing each to `deliver`
/// (which returns `false` to stop); `keep_going` is asked between sampler steps (a `false`
/// cancels). Figures and phase go to the stats as it goes.
pub(super) fn refine_walk(
    engine: &dyn Engine,
    shared: &Shared,
    refiner: &mut WalkRefiner,
    keep_going: &dyn Fn() -> bool,
    deliver: &mut dyn FnMut(Refinement) -> bool,
) -> Result<(), EndpointError> {
    let stats = &shared.stats;
    loop {
        let (walk, diffuse) = {
            let settings = shared.settings.lock();
            (settings.walk, settings.diffuse)
        };
        let (done, total) = refiner.counts(&walk, diffuse);
        stats.update(|s| s.refined = (total > 0).then_some((done, total)));
        if done >= total {
            return Ok(());
        }
        if !keep_going() {
            return Err(EndpointError::Cancelled);
        }
        let made = refiner.step(engine, &walk, diffuse, &mut |p| {
            stats.update(|s| {
                s.phase = format!(
                    "diffusing in-between {}/{total} (after keyframe {}), step {}/{}",
                    done + 1,
                    p.keyframe + 1,
                    p.step,
                    p.steps
                );
            });
            keep_going()
        })?;
        let Some((refinement, seconds)) = made else {
            return Ok(());
        };
        stats.update(|s| {
            let n = s.positions_diffused as f64;
            s.diffuse_seconds = Some((s.diffuse_seconds.unwrap_or(0.0) * n + seconds) / (n + 1.0));
            s.positions_diffused += 1;
            s.refined = Some((done + 1, total));
            s.phase = "walking".into();
        });
        if !deliver(refinement) {
            return Ok(());
        }
    }
}

/// The decode stage's side: the diffused in-betweens of its keyframes' generation, and
/// which of them a walk uses (those on its grid, the first `diffuse` of each pair).
pub(super) struct ReceivedRefinements {
    generation: u64,
    list: Vec<Refinement>,
    /// Diffused in-betweens per pair the walk uses.
    diffuse: usize,
}

impl ReceivedRefinements {
    pub(super) fn new(diffuse: usize) -> Self {
        Self {
            generation: 0,
            list: Vec::new(),
            diffuse,
        }
    }

    /// New keyframes, with what was made for them before their walk.
    pub(super) fn reset(&mut self, generation: u64, list: Vec<Refinement>) {
        self.generation = generation;
        self.list = list;
    }

    /// Keeps `refinement` when it is of the current generation; returns its pair then.
    pub(super) fn add(&mut self, refinement: Refinement) -> Option<usize> {
        if refinement.generation != self.generation {
            return None;
        }
        let segment = refinement.segment;
        self.list.push(refinement);
        Some(segment)
    }

    /// Sets how many per pair the walk uses; whether that changed.
    pub(super) fn set_diffuse(&mut self, diffuse: usize) -> bool {
        std::mem::replace(&mut self.diffuse, diffuse) != diffuse
    }

    /// The latents a walk with `settings` fixes inside its pairs.
    pub(super) fn fixed_for(&self, settings: &WalkSettings) -> FixedLatents {
        let grid = grid_of(settings);
        let mut fixed = FixedLatents::default();
        for r in &self.list {
            if r.grid == grid && r.rank < self.diffuse {
                fixed.insert(r.segment, r.t, r.latents.clone());
            }
        }
        fixed
    }
}
