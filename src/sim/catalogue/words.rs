//! The words the catalogue is made of: titles, names, subjects and publishers, and the
//! draws that pick them. Shared by the generator and the change generator, so a work added
//! later reads like one generated at the start.

use rand::Rng;

pub(super) const ADJECTIVES: &[&str] = &[
    "Silent",
    "Crimson",
    "Hidden",
    "Last",
    "Golden",
    "Broken",
    "Distant",
    "Secret",
    "Burning",
    "Winter",
    "Lost",
    "Iron",
    "Quiet",
    "Wandering",
    "Glass",
    "Midnight",
    "Northern",
    "Paper",
];
pub(super) const NOUNS: &[&str] = &[
    "River",
    "Garden",
    "Kingdom",
    "Lighthouse",
    "Orchard",
    "Harbour",
    "Clock",
    "Library",
    "Forest",
    "Mountain",
    "Voyage",
    "Letter",
    "Mirror",
    "Station",
    "Island",
    "Bridge",
    "Tower",
];
pub(super) const PLACES: &[&str] = &[
    "Avalon",
    "the North",
    "Samarkand",
    "the Sea",
    "Lisbon",
    "the Valley",
    "Prague",
    "Dawn",
];
pub(super) const FIRST: &[&str] = &[
    "Ada", "Bruno", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kiri",
    "Lars", "Mira", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Sven", "Tala",
];
pub(super) const LAST: &[&str] = &[
    "Almeida",
    "Brandt",
    "Castellanos",
    "Dahl",
    "Eriksen",
    "Fontaine",
    "Gallo",
    "Hale",
    "Ivanova",
    "Jensen",
    "Kowalski",
    "Lindqvist",
    "Moreau",
    "Novak",
    "Okafor",
    "Petrov",
];
pub(super) const TOPICS: &[&str] = &[
    "Fantasy",
    "Science Fiction",
    "Mystery",
    "History",
    "Poetry",
    "Romance",
    "Biography",
    "Travel",
    "Philosophy",
    "Adventure",
    "Horror",
    "Humor",
    "Cooking",
    "Music",
    "Art",
    "Mathematics",
    "Astronomy",
    "Botany",
    "Sea Stories",
    "Time Travel",
    "Dragons",
    "Detectives",
    "Architecture",
    "Folklore",
    "War",
    "Friendship",
    "Childhood",
    "Trains",
    "Cats",
    "Islands",
];
pub(super) const QUALIFIERS: &[&str] = &[
    "Fiction",
    "Juvenile Literature",
    "History",
    "Criticism",
    "Anthologies",
    "Drama",
];
pub(super) const PUBLISHERS: &[&str] = &[
    "Harper Trophy",
    "Puffin",
    "Penguin",
    "Gollancz",
    "Minotauro",
];

/// Picks an index in `0..n` skewed towards small indices, so a few authors and subjects
/// carry many works (the long tail of a real catalogue).
pub(super) fn skewed<R: Rng + ?Sized>(rng: &mut R, n: usize) -> usize {
    let u: f64 = rng.random();
    ((u * u * n as f64) as usize).min(n.saturating_sub(1))
}

pub(super) fn pick<'a, R: Rng + ?Sized>(rng: &mut R, list: &[&'a str]) -> &'a str {
    list[rng.random_range(0..list.len())]
}

pub(super) fn isbn(n: usize, len: usize) -> String {
    let digits = format!("{:013}", 9_780_000_000_000u64 + n as u64 * 7919);
    digits[digits.len() - len..].to_owned()
}

/// A work title in one of three patterns ("The Silent River", "River of Avalon", "Silent
/// River of Avalon").
pub(super) fn title<R: Rng + ?Sized>(rng: &mut R) -> String {
    match rng.random_range(0..3) {
        0 => format!("The {} {}", pick(rng, ADJECTIVES), pick(rng, NOUNS)),
        1 => format!("{} of {}", pick(rng, NOUNS), pick(rng, PLACES)),
        _ => format!(
            "{} {} of {}",
            pick(rng, ADJECTIVES),
            pick(rng, NOUNS),
            pick(rng, PLACES)
        ),
    }
}
