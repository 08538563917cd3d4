//! The integration tests, in one binary (`cargo test --release --test it`): one module per
//! area, and `support` for what they share. Filter by module, e.g.
//! `cargo test --release --test it viewer_screenshot -- --nocapture`.
//!
//! Every module runs in this one process, in parallel: process-wide state is shared. The GPU
//! tests share one headless wgpu context (`support::gpu`), and a test that must change the
//! environment runs alone in a child process (`support::process::run_alone`).

mod support;

mod audio;
mod bench;
mod clip;
mod diffused;
mod e2e;
mod encoders;
mod gpu_bicubic;
mod gpu_decode;
mod gpu_f16;
mod gpu_frames;
mod gpu_nn;
mod gpu_sample;
mod gpu_taesd;
mod hires;
mod image_keyframes;
mod img2img;
mod inbetween;
mod layering;
mod loading;
mod loops;
mod lora;
mod osc;
mod pipeline;
mod prompt_mix;
mod record;
mod refusals;
mod render;
mod ring;
mod scheduler;
mod segments;
mod signals;
mod single_file;
mod taesd;
mod tiled_decode;
mod unet;
mod unet_kernels;
mod upscale;
mod vae;
mod viewer;
mod viewer_screenshot;
mod walk;
mod x4;
