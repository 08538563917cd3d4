//! PNG files read back: the pixels as stored, as RGB or RGBA images, their text chunks, and
//! the frames of a folder in name order.

use std::path::{Path, PathBuf};

use dreamwalk::frame::RgbaImage;

/// A decoded PNG: its size, format and pixel bytes.
pub struct Png {
    pub width: u32,
    pub height: u32,
    pub color_type: png::ColorType,
    pub bit_depth: png::BitDepth,
    pub pixels: Vec<u8>,
}

fn decoder(path: &Path) -> png::Decoder<std::io::BufReader<std::fs::File>> {
    png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()))
}

/// The first frame of a PNG, decoded as stored.
pub fn read_png(path: &Path) -> Png {
    let mut reader = decoder(path).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    Png {
        width: info.width,
        height: info.height,
        color_type: info.color_type,
        bit_depth: info.bit_depth,
        pixels: buf,
    }
}

/// An 8-bit RGB PNG: width, height and packed RGB (asserts the format).
pub fn read_png_rgb(path: &Path) -> (u32, u32, Vec<u8>) {
    let png = read_png(path);
    assert_eq!(
        (png.color_type, png.bit_depth),
        (png::ColorType::Rgb, png::BitDepth::Eight)
    );
    (png.width, png.height, png.pixels)
}

/// An RGB or RGBA PNG as an RGBA image (opaque where the file has no alpha).
pub fn read_png_rgba(path: &Path) -> RgbaImage {
    let png = read_png(path);
    let pixels = match png.color_type {
        png::ColorType::Rgba => png.pixels,
        png::ColorType::Rgb => png
            .pixels
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
        other => panic!("unexpected PNG color type {other:?}"),
    };
    RgbaImage::from_pixels(png.width, png.height, pixels).expect("PNG size")
}

/// The UTF-8 text chunks of a PNG: (keyword, text).
pub fn png_texts(path: &Path) -> Vec<(String, String)> {
    let reader = decoder(path).read_info().unwrap();
    reader
        .info()
        .utf8_text
        .iter()
        .map(|t| (t.keyword.clone(), t.get_text().unwrap()))
        .collect()
}

/// The `.png` files of a folder, in name order.
pub fn png_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    files
}
