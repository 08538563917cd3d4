//! The decode stage: walks the keyframes' path, decodes each position (or takes it from the
//! loop cache) and sends the frames on in walk order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{select, Receiver, Sender};

use super::endpoints::{FromEndpoints, Keyframes};
use super::refinements::{ReceivedRefinements, Refinement};
use super::{PipelineOptions, Shared};
use crate::frame::FrameImage;
use crate::model::{DecoderKind, Engine};
use crate::pipeline::{FrameSource, Inbetweens};
use crate::walk::{FixedLatents, Walk, WalkSettings};

/// What the decode stage sends the in-between stage.
pub(super) enum Decoded {
    Frame(FrameImage, FrameSource),
    /// The frame after the end of an endless loop's last lap (its first frame again): only
    /// the in-betweens toward it are part of the walk, closing the loop. `End` follows.
    Closing(FrameImage, FrameSource),
    End,
}

/// Decoded frames of the current walk by path index, within a memory budget (of the memory
/// where they live: frames kept on the GPU are held there).
pub(super) struct DecodeCache {
    frames: HashMap<usize, FrameImage>,
    bytes: usize,
    budget: usize,
}

impl DecodeCache {
    fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
    }

    /// Forgets the frames `stale` says are (a refined pair's: its slerps changed).
    fn remove_where(&mut self, stale: impl Fn(usize) -> bool) {
        let bytes = &mut self.bytes;
        self.frames.retain(|&index, image| {
            let keep = !stale(index);
            if !keep {
                *bytes -= image.byte_len();
            }
            keep
        });
    }

    fn insert(&mut self, path_index: usize, image: &FrameImage) {
        let size = image.byte_len();
        // First come stays: a loop replays its start first, so keep that.
        if self.bytes + size <= self.budget {
            self.bytes += size;
            self.frames.insert(path_index, image.clone());
        }
    }
}

pub(super) struct DecodeStage {
    engine: Arc<dyn Engine>,
    shared: Arc<Shared>,
    options: PipelineOptions,
    walk: Option<Walk>,
    generation: u64,
    decoder: DecoderKind,
    /// Frames of the current walk sent so far (the walk's sequence position).
    sequence: u64,
    decoded_index: u64,
    ended: bool,
    /// A decode failed: wait for a settings change instead of failing in a loop.
    failed: bool,
    cache: DecodeCache,
    /// A seek asked for before there was a walk to seek in.
    pending_seek: Option<f64>,
    /// The current generation's diffused in-betweens; the walk holds those its settings use.
    refined: ReceivedRefinements,
}

impl DecodeStage {
    pub(super) fn new(
        engine: Arc<dyn Engine>,
        shared: Arc<Shared>,
        options: PipelineOptions,
    ) -> Self {
        let (decoder, diffuse) = {
            let settings = shared.settings.lock();
            (settings.decoder, settings.diffuse)
        };
        let budget = options.cache_budget_bytes;
        Self {
            engine,
            shared,
            options,
            walk: None,
            generation: 0,
            decoder,
            sequence: 0,
            decoded_index: 0,
            ended: false,
            failed: false,
            cache: DecodeCache {
                frames: HashMap::new(),
                bytes: 0,
                budget,
            },
            pending_seek: None,
            refined: ReceivedRefinements::new(diffuse),
        }
    }

    /// The diffused in-betweens a walk with `settings` uses (none for a timed walk).
    fn fixed_for(&self, settings: &WalkSettings) -> FixedLatents {
        match self.options.timeline {
            Some(_) => FixedLatents::default(),
            None => self.refined.fixed_for(settings),
        }
    }

    fn receive(&mut self, message: FromEndpoints) {
        match message {
            FromEndpoints::Keyframes(keyframes) => self.install_keyframes(keyframes),
            FromEndpoints::Refined(refinement) => self.add_refinement(refinement),
        }
    }

    /// A diffused in-between made while the walk plays: in the walk (when its settings use
    /// it), and its pair's cached frames forgotten, so the walk shows it when it next
    /// passes there.
    fn add_refinement(&mut self, refinement: Refinement) {
        let Some(segment) = self.refined.add(refinement) else {
            return;
        };
        let Some(walk) = self.walk.take() else {
            return;
        };
        let fixed = self.fixed_for(walk.settings());
        let changed = fixed.in_segment(segment).len() != walk.fixed().in_segment(segment).len();
        let walk = walk.with_fixed(fixed);
        if changed {
            self.cache
                .remove_where(|index| walk.position(index).segment == segment);
        }
        self.walk = Some(walk);
    }

    fn install_keyframes(&mut self, keyframes: Keyframes) {
        let settings = self.shared.settings.lock().walk;
        self.refined.reset(keyframes.generation, keyframes.refined);
        let walk = Walk::new(keyframes.latents, settings)
            .with_timeline(self.options.timeline.clone())
            .with_fixed(self.fixed_for(&settings));
        // Keep the walk where it is unless it had ended: then play the new one from the start.
        self.sequence = match (&self.walk, self.ended) {
            (Some(old), false) => {
                let here = old
                    .path_index_at(self.sequence.saturating_sub(1))
                    .unwrap_or(0);
                old.carry_over(here, &walk) as u64
            }
            // A span of the stream starts at the decoded frame its first frame is or follows.
            _ => self.options.span.map_or(0, |span| span.first_decoded()),
        };
        self.walk = Some(walk);
        self.generation = keyframes.generation;
        self.ended = false;
        self.failed = false;
        self.cache.clear();
    }

    /// Jumps to a place asked for by [`super::Pipeline::seek`], once there is a walk.
    fn apply_seek(&mut self) {
        if let Some(fraction) = self.shared.seek_to.lock().take() {
            self.pending_seek = Some(fraction);
        }
        let Some(walk) = &self.walk else {
            return;
        };
        if let Some(fraction) = self.pending_seek.take() {
            self.sequence = walk.path_index_at_fraction(fraction) as u64;
            self.ended = false;
        }
    }

    /// Applies live walk and decoder settings; a change clears the cache.
    fn sync_settings(&mut self) {
        let (walk_settings, decoder, diffuse) = {
            let s = self.shared.settings.lock();
            (s.walk, s.decoder, s.diffuse)
        };
        if decoder != self.decoder {
            self.decoder = decoder;
            self.failed = false;
            self.cache.clear();
        }
        if self.refined.set_diffuse(diffuse) {
            if let Some(walk) = self.walk.take() {
                let fixed = self.fixed_for(walk.settings());
                self.walk = Some(walk.with_fixed(fixed));
                self.cache.clear();
            }
        }
        if let Some(walk) = &self.walk {
            if *walk.settings() != walk_settings {
                let new = Walk::new(walk.keyframes().to_vec(), walk_settings)
                    .with_timeline(self.options.timeline.clone())
                    .with_fixed(self.fixed_for(&walk_settings));
                let here = walk
                    .path_index_at(self.sequence.saturating_sub(1))
                    .unwrap_or(0);
                let next = walk.carry_over(here, &new) as u64;
                // Continue after the current place, not on it again.
                self.sequence = if self.sequence == 0 { 0 } else { next + 1 };
                if walk.settings().loop_mode != walk_settings.loop_mode {
                    self.ended = false;
                }
                self.walk = Some(new);
                self.failed = false;
                self.cache.clear();
            }
        }
    }

    pub(super) fn run(
        mut self,
        from_endpoints: Receiver<FromEndpoints>,
        wake: Receiver<()>,
        decoded: Sender<Decoded>,
        stop: Receiver<()>,
    ) {
        loop {
            for message in from_endpoints.try_iter() {
                self.receive(message);
            }
            self.sync_settings();
            self.apply_seek();
            let paused = self.shared.run_state.lock().paused;
            if self.ended && self.options.stop_at_end {
                let _ = decoded.send(Decoded::End);
                return;
            }
            if paused || self.walk.is_none() || self.ended || self.failed {
                self.shared.stats.update(|s| s.playing = false);
                select! {
                    recv(from_endpoints) -> m => match m {
                        Ok(m) => self.receive(m),
                        Err(_) => return,
                    },
                    recv(wake) -> _ => {},
                    recv(stop) -> _ => return,
                }
                continue;
            }
            let Some(message) = self.next_frame() else {
                continue;
            };
            self.shared.stats.update(|s| s.playing = true);
            select! {
                send(decoded, message) -> r => if r.is_err() { return },
                recv(stop) -> _ => return,
            }
        }
    }

    /// Decodes (or takes from the cache) the walk's next frame; past the end of an endless
    /// loop's last lap, the frame its closing in-betweens lead to.
    fn next_frame(&mut self) -> Option<Decoded> {
        let walk = self.walk.as_ref()?;
        if let Some(span) = &self.options.span {
            if self.sequence > span.last_decoded() {
                self.ended = true;
                return None;
            }
        }
        let past_end =
            self.options.stop_at_end && self.sequence >= walk.frames_in_laps(self.options.laps);
        // In-betweens close the loop only where there are any (no decode otherwise).
        let closing = past_end
            && walk.closes_loop()
            && self.shared.settings.lock().inbetweens != Inbetweens::Fixed(0);
        let Some(path_index) = walk
            .path_index_at(self.sequence)
            .filter(|_| !past_end || closing)
        else {
            self.ended = true;
            return None;
        };
        let position = walk.position(path_index);
        let image = match self.cache.frames.get(&path_index) {
            Some(image) => {
                self.shared.stats.update(|s| s.frames_from_cache += 1);
                image.clone()
            }
            None => {
                let started = Instant::now();
                let decoded = walk
                    .latents_at(&position)
                    .map_err(crate::model::ModelError::from)
                    .and_then(|latents| self.engine.decode_frame(&latents, self.decoder));
                match decoded {
                    Ok(image) => {
                        self.shared
                            .stats
                            .record_decode(started.elapsed().as_secs_f64() * 1e3);
                        self.cache.insert(path_index, &image);
                        image
                    }
                    Err(e) => {
                        tracing::warn!("decoding failed: {e}");
                        self.shared.stats.update(|s| {
                            s.last_error = Some(format!("decoding failed: {e}"));
                        });
                        self.failed = true;
                        return None;
                    }
                }
            }
        };
        let source = FrameSource {
            decoded_index: self.decoded_index,
            segment: position.segment,
            t: position.t,
            inbetween: None,
            generation: self.generation,
            starts_lap: walk.starts_lap(self.sequence),
        };
        if closing {
            self.ended = true;
            return Some(Decoded::Closing(image, source));
        }
        self.shared
            .stats
            .update(|s| s.position = (position.segment, position.t));
        self.sequence += 1;
        self.decoded_index += 1;
        Some(Decoded::Frame(image, source))
    }
}
