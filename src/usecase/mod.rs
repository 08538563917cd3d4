//! What a person does with dreamwalk, as library functions with typed arguments: load a
//! model ([`load`]), render a walk headless ([`render`]), or one segment of it ([`segment`]),
//! join segments into one video ([`join`]), upscale a picture 4x ([`upscale`]). The command line, the window and
//! the bench call these; none of them builds another's arguments to reach them.

pub mod audio_walk;
pub mod hires;
pub mod join;
mod join_sound;
pub mod load;
pub mod render;
pub mod save_latents;
pub mod segment;
pub mod upscale;

pub use audio_walk::{audio_timeline, AudioWalkError};
pub use hires::{with_hires, HiresSource};
pub use join::{join, JoinError, JoinJob, JoinSummary, SegmentFormat};
pub use load::{headless_engine, load_engine, load_engine_on, ModelSource};
pub use render::{
    keyframe_labels, render, render_until, RenderError, RenderHeader, RenderJob, RenderProgress,
    RenderSummary,
};
pub use save_latents::save_keyframes;
pub use segment::{segment_span, FrameRange, SegmentError};
pub use upscale::{
    check_upscale, upscale, upscale_with, UpscaleHeader, UpscaleJob, UpscaleProgress,
    UpscaleSummary,
};
