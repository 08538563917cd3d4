//! `.y4m` files read back: the header line and whole frames of three full-size planes, and
//! the RGB -> YCbCr conversion they document.

use std::path::Path;

use dreamwalk::frame::RgbaImage;

/// The header line (without its newline) and the frames after it.
pub fn split_header(data: &[u8]) -> (&[u8], &[u8]) {
    let header_end = data.iter().position(|&b| b == b'\n').expect("header line");
    (&data[..header_end], &data[header_end + 1..])
}

/// The documented RGB -> YCbCr (full-range BT.601, JFIF) conversion, written out again.
fn documented_ycbcr(r: u8, g: u8, b: u8) -> [u8; 3] {
    let (r, g, b) = (i64::from(r), i64::from(g), i64::from(b));
    let y = (19595 * r + 38470 * g + 7471 * b + 32768) >> 16;
    let cb = (-11059 * r - 21709 * g + 32768 * b + (128 << 16) + 32767) >> 16;
    let cr = (32768 * r - 27439 * g - 5329 * b + (128 << 16) + 32767) >> 16;
    [y as u8, cb as u8, cr as u8]
}

/// A parsed `.y4m`: header fields and frames of three planes.
pub struct Y4m {
    pub header: String,
    pub frames: Vec<Vec<u8>>,
}

/// A `.y4m` of `width` x `height` frames, asserting each frame is whole.
pub fn read_y4m(path: &Path, width: u32, height: u32) -> Y4m {
    let data = std::fs::read(path).unwrap();
    let (header, data) = split_header(&data);
    let header = String::from_utf8(header.to_vec()).unwrap();
    let plane = width as usize * height as usize;
    let mut frames = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        assert_eq!(
            &data[pos..pos + 6],
            b"FRAME\n",
            "frame {} header",
            frames.len()
        );
        pos += 6;
        assert!(
            pos + 3 * plane <= data.len(),
            "frame {} is whole",
            frames.len()
        );
        frames.push(data[pos..pos + 3 * plane].to_vec());
        pos += 3 * plane;
    }
    Y4m { header, frames }
}

/// Asserts that the planes of frame `index` are exactly `frame` converted as documented.
pub fn assert_y4m_frame_exact(frame: &RgbaImage, planes: &[u8], index: usize) {
    let plane = frame.pixels.len() / 4;
    for (i, p) in frame.pixels.chunks_exact(4).enumerate() {
        let expected = documented_ycbcr(p[0], p[1], p[2]);
        let got = [planes[i], planes[plane + i], planes[2 * plane + i]];
        assert_eq!(got, expected, "frame {index} pixel {i}: RGB {:?}", &p[..3]);
    }
}
