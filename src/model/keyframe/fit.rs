//! Fitting a picture to the walk's frame size: scale it to cover the frame and cut the
//! centre out ([`Fit::Crop`]), or scale it to fit inside and fill the rest with a neutral
//! grey ([`Fit::Pad`]).

use image::imageops::{self, FilterType};

use crate::frame::RgbaImage;

/// The grey that pads a picture and shows through its transparent parts: the middle of the
/// range, which the encoders see as 0 (no colour pushed either way).
pub const PAD_GREY: u8 = 128;

/// How a picture of another shape meets the frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fit {
    /// Scale to cover the frame, cut what sticks out on both sides equally.
    #[default]
    Crop,
    /// Scale to fit inside the frame, [`PAD_GREY`] bars on both sides equally.
    Pad,
}

impl Fit {
    /// Both, in the order the window lists them.
    pub const ALL: [Fit; 2] = [Fit::Crop, Fit::Pad];

    /// The word the window and the command line use.
    pub fn label(self) -> &'static str {
        match self {
            Fit::Crop => "crop",
            Fit::Pad => "pad",
        }
    }
}

/// `image` at `size` (width, height): scaled (Catmull-Rom, which filters over the whole
/// footprint when it shrinks) and cropped or padded as `fit` says, centred. A picture
/// already of that size comes back unchanged. `image` and `size` must not be empty.
pub fn fit_image(image: &RgbaImage, size: (u32, u32), fit: Fit) -> RgbaImage {
    let (width, height) = size;
    let (w, h) = (f64::from(image.width), f64::from(image.height));
    let scale_x = f64::from(width) / w;
    let scale_y = f64::from(height) / h;
    let scaled_side = |side: f64, scale: f64| (side * scale).round().max(1.0) as u32;
    match fit {
        Fit::Crop => {
            let scale = scale_x.max(scale_y);
            let sw = scaled_side(w, scale).max(width);
            let sh = scaled_side(h, scale).max(height);
            let scaled = resize(image, sw, sh);
            let (x0, y0) = ((sw - width) / 2, (sh - height) / 2);
            let mut out = RgbaImage::new(width, height);
            let row_bytes = width as usize * 4;
            for y in 0..height as usize {
                let from = ((y0 as usize + y) * sw as usize + x0 as usize) * 4;
                out.pixels[y * row_bytes..(y + 1) * row_bytes]
                    .copy_from_slice(&scaled.pixels[from..from + row_bytes]);
            }
            out
        }
        Fit::Pad => {
            let scale = scale_x.min(scale_y);
            let sw = scaled_side(w, scale).min(width);
            let sh = scaled_side(h, scale).min(height);
            let scaled = resize(image, sw, sh);
            let (x0, y0) = ((width - sw) / 2, (height - sh) / 2);
            let mut out = RgbaImage {
                width,
                height,
                pixels: [PAD_GREY, PAD_GREY, PAD_GREY, 255]
                    .repeat(width as usize * height as usize),
            };
            let row_bytes = sw as usize * 4;
            for y in 0..sh as usize {
                let to = ((y0 as usize + y) * width as usize + x0 as usize) * 4;
                out.pixels[to..to + row_bytes]
                    .copy_from_slice(&scaled.pixels[y * row_bytes..(y + 1) * row_bytes]);
            }
            out
        }
    }
}

/// A small copy of `image` for a panel: at most `side` pixels on its longer side, its shape
/// kept (itself when it is already that small). `side` must not be 0.
pub fn thumbnail(image: &RgbaImage, side: u32) -> RgbaImage {
    let (w, h) = (image.width, image.height);
    let scale = f64::from(side) / f64::from(w.max(h));
    if scale >= 1.0 {
        return image.clone();
    }
    let scaled = |s: u32| ((f64::from(s) * scale).round() as u32).clamp(1, side);
    resize(image, scaled(w), scaled(h))
}

/// `image` resized to `width` x `height` (itself when it already is that size).
fn resize(image: &RgbaImage, width: u32, height: u32) -> RgbaImage {
    if (image.width, image.height) == (width, height) {
        return image.clone();
    }
    let buffer = image::RgbaImage::from_raw(image.width, image.height, image.pixels.clone())
        .expect("an RgbaImage's bytes match its size");
    let resized = imageops::resize(&buffer, width, height, FilterType::CatmullRom);
    RgbaImage {
        width,
        height,
        pixels: resized.into_raw(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four vertical bands, `band` pixels wide each, in four colours.
    fn bands(band: u32, height: u32) -> RgbaImage {
        const COLOURS: [[u8; 3]; 4] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]];
        let mut image = RgbaImage::new(band * 4, height);
        for (i, p) in image.pixels.chunks_exact_mut(4).enumerate() {
            let x = i as u32 % (band * 4);
            p[..3].copy_from_slice(&COLOURS[(x / band) as usize]);
        }
        image
    }

    fn pixel(image: &RgbaImage, x: u32, y: u32) -> [u8; 3] {
        let i = ((y * image.width + x) * 4) as usize;
        [image.pixels[i], image.pixels[i + 1], image.pixels[i + 2]]
    }

    fn close(a: [u8; 3], b: [u8; 3]) -> bool {
        a.iter().zip(b).all(|(&x, y)| x.abs_diff(y) <= 1)
    }

    #[test]
    fn a_thumbnail_keeps_the_shape_within_its_side() {
        let wide = thumbnail(&bands(50, 40), 96); // 200x40
        assert_eq!((wide.width, wide.height), (96, 19));
        // Each band keeps its colour in its middle.
        assert!(close(pixel(&wide, 12, 9), [255, 0, 0]));
        assert!(close(pixel(&wide, 84, 9), [255, 255, 0]));
        let small = bands(4, 8);
        assert_eq!(thumbnail(&small, 96).pixels, small.pixels);
        let thin = thumbnail(&bands(250, 1), 96); // 1000x1: never 0 rows
        assert_eq!((thin.width, thin.height), (96, 1));
    }

    #[test]
    fn crop_keeps_the_centre_at_the_frames_height() {
        // 128x32 into 32x32: no scaling (the height already fits), columns 48..80 kept:
        // the right half of the green band, the left half of the blue one.
        let out = fit_image(&bands(32, 32), (32, 32), Fit::Crop);
        assert_eq!((out.width, out.height), (32, 32));
        for y in [0, 31] {
            for x in 0..16 {
                assert_eq!(pixel(&out, x, y), [0, 255, 0], "({x}, {y})");
                assert_eq!(pixel(&out, x + 16, y), [0, 0, 255], "({}, {y})", x + 16);
            }
        }
    }

    #[test]
    fn crop_scales_to_cover_then_cuts_the_sides() {
        // 256x32 into 64x64: scaled x2 to 512x64, columns 224..288 kept (bands of 128 px):
        // 32 columns of green, then 32 of blue.
        let out = fit_image(&bands(64, 32), (64, 64), Fit::Crop);
        assert_eq!((out.width, out.height), (64, 64));
        for y in [0, 32, 63] {
            // Away from the one edge the filter softens.
            assert!(
                close(pixel(&out, 2, y), [0, 255, 0]),
                "{:?}",
                pixel(&out, 2, y)
            );
            assert!(close(pixel(&out, 29, y), [0, 255, 0]));
            assert!(close(pixel(&out, 34, y), [0, 0, 255]));
            assert!(close(pixel(&out, 61, y), [0, 0, 255]));
        }
    }

    #[test]
    fn pad_shows_the_whole_picture_between_grey_bars() {
        // 128x32 into 64x64: scaled by 1/2 to 64x16, centred on rows 24..40.
        let out = fit_image(&bands(32, 32), (64, 64), Fit::Pad);
        assert_eq!((out.width, out.height), (64, 64));
        let grey = [PAD_GREY; 3];
        for x in 0..64 {
            for y in (0..24).chain(40..64) {
                assert_eq!(pixel(&out, x, y), grey, "({x}, {y})");
            }
        }
        // All four bands, 16 columns each.
        for (band, colour) in [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]]
            .into_iter()
            .enumerate()
        {
            let x = band as u32 * 16 + 8;
            for y in 26..38 {
                assert!(
                    close(pixel(&out, x, y), colour),
                    "({x}, {y}): {:?}",
                    pixel(&out, x, y)
                );
            }
        }
        // A tall picture: bars left and right.
        let tall = RgbaImage::new(10, 40);
        let out = fit_image(&tall, (32, 32), Fit::Pad);
        assert_eq!(pixel(&out, 0, 16), grey);
        assert_eq!(pixel(&out, 11, 16), grey);
        assert_eq!(pixel(&out, 12, 16), [0, 0, 0]);
        assert_eq!(pixel(&out, 19, 16), [0, 0, 0]);
        assert_eq!(pixel(&out, 20, 16), grey);
    }

    #[test]
    fn a_picture_of_the_frames_size_is_unchanged() {
        let image = bands(8, 16);
        assert_eq!(fit_image(&image, (32, 16), Fit::Crop), image);
        assert_eq!(fit_image(&image, (32, 16), Fit::Pad), image);
    }
}
