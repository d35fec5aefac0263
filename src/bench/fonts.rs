//! The one font the plots need. `plotters` draws text with `ab_glyph` from font bytes it is
//! given, so no font library or fontconfig is linked; the bytes come from DejaVu Sans on disk
//! (Debian's `fonts-dejavu-core`, which `scripts/bench.sh` installs when missing) or from the
//! file `BENCH_FONT` names.

use std::sync::OnceLock;

use plotters::style::{FontStyle, register_font};

/// Where Debian, Ubuntu, Fedora and Alpine put DejaVu Sans.
const CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers the font as `sans-serif` once per process; the error says how to get one.
pub fn ensure() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED.get_or_init(register).clone()
}

fn register() -> Result<(), String> {
    let from_env = std::env::var("BENCH_FONT").ok();
    let paths = from_env
        .iter()
        .map(String::as_str)
        .chain(CANDIDATES.iter().copied());
    for path in paths {
        if let Ok(bytes) = std::fs::read(path) {
            // `register_font` keeps a `'static` reference; the font lives as long as the
            // process, once.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            return register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{path} is not a usable TrueType font"));
        }
    }
    Err(
        "no DejaVu Sans found: `apt-get install fonts-dejavu-core` or set BENCH_FONT to a .ttf"
            .to_owned(),
    )
}
