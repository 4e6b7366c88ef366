//! The official prompt recipe: lowercase, then wrap with the retrieval instruction.

/// The instruction VoxTell wraps every prompt with (Qwen3-Embedding's query format).
pub const INSTRUCTION: &str =
    "Given an anatomical term query, retrieve the precise anatomical entity and location it represents";

/// Lowercase a prompt as the official code does (Unicode lowercase, nothing else: no trimming,
/// no whitespace normalisation).
pub fn normalize(prompt: &str) -> String {
    prompt.to_lowercase()
}

/// `Instruct: {instruction}\nQuery: {prompt}` — one newline, no trailing newline.
pub fn wrap(instruction: &str, prompt: &str) -> String {
    format!("Instruct: {instruction}\nQuery: {prompt}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowercase_only() {
        assert_eq!(normalize("  Left KIDNEY  "), "  left kidney  ");
        assert_eq!(normalize("Läsion ΣΑΣ"), "läsion σας");
    }

    #[test]
    fn wrapped_exactly() {
        assert_eq!(
            wrap(INSTRUCTION, "liver"),
            "Instruct: Given an anatomical term query, retrieve the precise anatomical entity and location it represents\nQuery: liver"
        );
    }
}
