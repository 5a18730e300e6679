//! Templates: choosing the text for a job and filling in its placeholders.
//!
//! Selection follows the contract: the job's type with the job's locale
//! (`ja-JP`), then its language (`ja`), then the type's template without a
//! locale; failing all three, the same chain for `Generic`; failing that, the
//! job is dead-lettered `no_template`. Placeholders are Logto's: `{{ name }}`
//! with optional spaces and dotted paths into the payload. Templates are parsed
//! once at start-up, so rendering a job is one pass with no searching.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::job::{Payload, TemplateType};

/// One template as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TemplateEntry {
    pub kind: TemplateType,
    /// A BCP 47 tag such as `ja-JP` or `ja`; `None` serves every locale.
    pub locale: Option<String>,
    pub content: String,
}

/// A template ready to render.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    entry: TemplateEntry,
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    /// A placeholder: its dotted path and the text as written (kept when the
    /// payload lacks the path's first key, as Logto does).
    Var {
        path: Vec<String>,
        written: String,
    },
}

/// Why a set of templates cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TemplateError {
    #[error("two templates for type {kind} and {locale}")]
    Duplicate { kind: TemplateType, locale: String },
    #[error("the {kind} template has no {{{{code}}}} placeholder, so the user would get no code")]
    MissingCode { kind: TemplateType },
    #[error("the {kind} template is empty")]
    Empty { kind: TemplateType },
    #[error("the {kind} template's locale must look like `ja` or `ja-JP`")]
    BadLocale { kind: TemplateType },
}

impl Template {
    fn parse(entry: TemplateEntry) -> Template {
        let parts = parse_parts(&entry.content);
        Template { entry, parts }
    }

    pub(crate) fn kind(&self) -> TemplateType {
        self.entry.kind
    }

    pub(crate) fn locale(&self) -> Option<&str> {
        self.entry.locale.as_deref()
    }

    #[cfg(test)]
    fn content(&self) -> &str {
        &self.entry.content
    }

    /// Whether the template uses a variable as the first key of a placeholder.
    pub(crate) fn uses(&self, var: &str) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Var { path, .. } if path.first().is_some_and(|k| k == var)))
    }

    /// Fills in the placeholders from the payload, as Logto does: a
    /// placeholder whose first key is absent stays as written; a present key
    /// whose value is null or missing deeper down becomes empty; strings go in
    /// as they are, other values as JSON.
    pub(crate) fn render(&self, payload: &Payload) -> String {
        self.render_with(payload.vars(), |_, value| value)
    }

    /// Renders with every filled-in value replaced by stars of the same
    /// length: what `--dry-run` logs, so the layout shows but no code does.
    pub(crate) fn render_masked(&self, payload: &Payload) -> String {
        self.render_with(payload.vars(), |_, value| "*".repeat(value.chars().count()))
    }

    fn render_with(
        &self,
        vars: &Map<String, Value>,
        shown: impl Fn(&[String], String) -> String,
    ) -> String {
        let mut out = String::with_capacity(self.entry.content.len() + 16);
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Var { path, written } => match lookup(vars, path) {
                    None => out.push_str(written),
                    Some(value) => out.push_str(&shown(path, value)),
                },
            }
        }
        out
    }
}

/// The value of a dotted path: `None` when the first key is absent (the
/// placeholder stays), otherwise the text to put in.
fn lookup(vars: &Map<String, Value>, path: &[String]) -> Option<String> {
    let (first, rest) = path.split_first()?;
    let mut value = vars.get(first)?;
    for key in rest {
        value = match value.get(key.as_str()) {
            Some(v) => v,
            None => return Some(String::new()),
        };
    }
    Some(match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Splits a template into text and placeholders (`{{\s*([\w.]+)\s*}}`).
fn parse_parts(content: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = content;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        match placeholder(after) {
            Some((name, len)) => {
                text.push_str(&rest[..open]);
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(Part::Var {
                    path: name.split('.').map(str::to_owned).collect(),
                    written: rest[open..open + 2 + len].to_owned(),
                });
                rest = &after[len..];
            }
            None => {
                // Not a placeholder here; one brace further on it may be
                // (`{{{code}}}` renders as `{123456}`, as in Logto).
                text.push_str(&rest[..open + 1]);
                rest = &rest[open + 1..];
            }
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    parts
}

/// After `{{`: optional white space, a name of word characters and dots,
/// optional white space, `}}`. Returns the name and the length consumed.
fn placeholder(after: &str) -> Option<(&str, usize)> {
    let trimmed = after.trim_start();
    let lead = after.len() - trimmed.len();
    let name_len = trimmed
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(trimmed.len());
    if name_len == 0 {
        return None;
    }
    let tail = &trimmed[name_len..];
    let tail_trimmed = tail.trim_start();
    let gap = tail.len() - tail_trimmed.len();
    tail_trimmed
        .starts_with("}}")
        .then(|| (&trimmed[..name_len], lead + name_len + gap + 2))
}

/// Normalises a locale tag for matching: lower case, `_` as `-`.
fn normalise(locale: &str) -> String {
    locale.trim().replace('_', "-").to_ascii_lowercase()
}

fn valid_locale(locale: &str) -> bool {
    !locale.is_empty()
        && locale.len() <= 35
        && locale
            .split(['-', '_'])
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Every configured template, indexed for selection.
#[derive(Debug, Clone, Default)]
pub(crate) struct Templates {
    by_key: HashMap<(TemplateType, Option<String>), Template>,
}

impl Templates {
    /// Checks and indexes the templates: no duplicates, no empty text, a
    /// `{{code}}` in every type that carries a code, locales that look like
    /// tags.
    pub(crate) fn new(entries: Vec<TemplateEntry>) -> Result<Templates, TemplateError> {
        let mut by_key = HashMap::new();
        for entry in entries {
            let kind = entry.kind;
            if entry.content.trim().is_empty() {
                return Err(TemplateError::Empty { kind });
            }
            if let Some(locale) = &entry.locale
                && !valid_locale(locale)
            {
                return Err(TemplateError::BadLocale { kind });
            }
            let template = Template::parse(entry);
            if kind.carries_code() && !template.uses("code") {
                return Err(TemplateError::MissingCode { kind });
            }
            let key = (kind, template.locale().map(normalise));
            if by_key.contains_key(&key) {
                return Err(TemplateError::Duplicate {
                    kind,
                    locale: template
                        .locale()
                        .map_or_else(|| "no locale".to_owned(), |l| format!("locale {l}")),
                });
            }
            by_key.insert(key, template);
        }
        Ok(Templates { by_key })
    }

    /// Chooses the template for a job (see the module doc for the order).
    pub(crate) fn select(&self, kind: TemplateType, locale: Option<&str>) -> Option<&Template> {
        self.select_exact(kind, locale).or_else(|| {
            (kind != TemplateType::Generic)
                .then(|| self.select_exact(TemplateType::Generic, locale))
                .flatten()
        })
    }

    fn select_exact(&self, kind: TemplateType, locale: Option<&str>) -> Option<&Template> {
        if let Some(locale) = locale.map(normalise).filter(|l| !l.is_empty()) {
            if let Some(t) = self.by_key.get(&(kind, Some(locale.clone()))) {
                return Some(t);
            }
            if let Some((language, _)) = locale.split_once('-')
                && let Some(t) = self.by_key.get(&(kind, Some(language.to_owned())))
            {
                return Some(t);
            }
        }
        self.by_key.get(&(kind, None))
    }

    /// Every template, by type then locale, for `check-config`.
    pub(crate) fn all(&self) -> Vec<&Template> {
        let mut all: Vec<&Template> = self.by_key.values().collect();
        all.sort_by(|a, b| (a.kind(), a.locale()).cmp(&(b.kind(), b.locale())));
        all
    }

    /// Whether every job of this type finds a template, whatever its locale:
    /// its type or Generic has one without a locale.
    pub(crate) fn covers(&self, kind: TemplateType) -> bool {
        self.by_key.contains_key(&(kind, None))
            || self.by_key.contains_key(&(TemplateType::Generic, None))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(kind: TemplateType, locale: Option<&str>, content: &str) -> TemplateEntry {
        TemplateEntry {
            kind,
            locale: locale.map(str::to_owned),
            content: content.to_owned(),
        }
    }

    fn payload(v: Value) -> Payload {
        match v {
            Value::Object(map) => Payload::new(map),
            _ => unreachable!(),
        }
    }

    fn set() -> Templates {
        use TemplateType::*;
        Templates::new(vec![
            entry(SignIn, None, "Sign in: {{code}}"),
            entry(SignIn, Some("ja"), "サインイン {{code}}"),
            entry(SignIn, Some("ja-JP"), "サインイン(JP) {{code}}"),
            entry(Generic, None, "Code {{code}}"),
            entry(Generic, Some("fr"), "Code FR {{code}}"),
        ])
        .unwrap()
    }

    #[test]
    fn selects_locale_then_language_then_none() {
        use TemplateType::*;
        let t = set();
        let pick = |kind, locale| t.select(kind, locale).map(Template::content);
        assert_eq!(pick(SignIn, Some("ja-JP")), Some("サインイン(JP) {{code}}"));
        assert_eq!(pick(SignIn, Some("ja_jp")), Some("サインイン(JP) {{code}}"));
        assert_eq!(pick(SignIn, Some("ja-Hira")), Some("サインイン {{code}}"));
        assert_eq!(pick(SignIn, Some("ja")), Some("サインイン {{code}}"));
        assert_eq!(pick(SignIn, Some("en-US")), Some("Sign in: {{code}}"));
        assert_eq!(pick(SignIn, None), Some("Sign in: {{code}}"));
    }

    #[test]
    fn falls_back_to_generic_with_the_same_chain() {
        use TemplateType::*;
        let t = set();
        let pick = |kind, locale| t.select(kind, locale).map(Template::content);
        assert_eq!(pick(Register, Some("fr-CA")), Some("Code FR {{code}}"));
        assert_eq!(pick(Register, Some("de")), Some("Code {{code}}"));
        assert_eq!(pick(ForgotPassword, None), Some("Code {{code}}"));
    }

    #[test]
    fn no_template_when_neither_type_nor_generic_exists() {
        use TemplateType::*;
        let t = Templates::new(vec![entry(SignIn, Some("ja"), "{{code}}")]).unwrap();
        assert!(t.select(Register, Some("ja")).is_none());
        assert!(t.select(SignIn, Some("en")).is_none());
    }

    #[test]
    fn renders_like_logto() {
        use TemplateType::*;
        let t = Templates::new(vec![entry(
            Generic,
            None,
            "{{code}}|{{ code }}|{{missing}}|{{org.name}}|{{org.none}}|{{nothing}}|{{n}}|{{ bad-name }}|{{",
        )])
        .unwrap();
        let p =
            payload(json!({"code": "123456", "org": {"name": "Acme"}, "nothing": null, "n": 7}));
        assert_eq!(
            t.select(Generic, None).unwrap().render(&p),
            "123456|123456|{{missing}}|Acme|||7|{{ bad-name }}|{{"
        );
    }

    #[test]
    fn masked_rendering_hides_every_value() {
        let t = set();
        let p = payload(json!({"code": "123456"}));
        assert_eq!(
            t.select(TemplateType::SignIn, None)
                .unwrap()
                .render_masked(&p),
            "Sign in: ******"
        );
    }

    #[test]
    fn refuses_bad_sets() {
        use TemplateType::*;
        assert_eq!(
            Templates::new(vec![entry(SignIn, None, "Hello")]).unwrap_err(),
            TemplateError::MissingCode { kind: SignIn }
        );
        assert!(Templates::new(vec![entry(OrganizationInvitation, None, "Join {{link}}")]).is_ok());
        assert!(matches!(
            Templates::new(vec![
                entry(SignIn, Some("ja"), "{{code}}"),
                entry(SignIn, Some("JA"), "{{code}}")
            ]),
            Err(TemplateError::Duplicate { .. })
        ));
        assert!(matches!(
            Templates::new(vec![entry(SignIn, None, "  ")]),
            Err(TemplateError::Empty { .. })
        ));
        assert!(matches!(
            Templates::new(vec![entry(SignIn, Some("ja JP"), "{{code}}")]),
            Err(TemplateError::BadLocale { .. })
        ));
    }
}
