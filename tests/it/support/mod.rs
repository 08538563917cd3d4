//! What the test modules share: the fixtures, the GPU, the `dreamwalk` binary and child
//! test processes, synthetic frames for the recorder, and readers for what dreamwalk writes
//! (PNG, Y4M, MP4, and ffmpeg's view of a file).

pub mod ffmpeg;
pub mod fixtures;
pub mod gpu;
pub mod images;
pub mod mp4;
pub mod process;
pub mod recording;
pub mod y4m;
