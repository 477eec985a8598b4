//! Input checks shared by the domains. Each returns BAD_USER_INPUT naming the field.

use crate::error::{AppError, AppResult};

/// Trims `raw` and checks it is `min..=max` characters with no control characters: names,
/// titles and other one-line labels.
pub fn single_line(field: &str, raw: &str, min: usize, max: usize) -> AppResult<String> {
    let value = raw.trim();
    let chars = value.chars().count();
    if chars < min || chars > max {
        return Err(AppError::bad_input(
            field,
            if min > 0 {
                format!("{field} must be {min} to {max} characters")
            } else {
                format!("{field} must be at most {max} characters")
            },
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(AppError::bad_input(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(value.to_owned())
}

/// Checks a free text is at most `max` characters (kept as given, newlines allowed).
pub fn long_text(field: &str, raw: &str, max: usize) -> AppResult<String> {
    if raw.chars().count() > max {
        return Err(AppError::bad_input(
            field,
            format!("{field} must be at most {max} characters"),
        ));
    }
    Ok(raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_rules() {
        assert_eq!(single_line("name", "  Team  ", 1, 100).expect("ok"), "Team");
        assert!(single_line("name", " ", 1, 100).is_err());
        assert!(single_line("name", &"x".repeat(101), 1, 100).is_err());
        assert!(single_line("name", "a\nb", 1, 100).is_err());
        assert_eq!(single_line("title", "", 0, 200).expect("empty allowed"), "");
    }

    #[test]
    fn long_text_counts_characters() {
        assert!(long_text("p", &"é".repeat(10), 10).is_ok());
        assert!(long_text("p", &"é".repeat(11), 10).is_err());
    }
}
