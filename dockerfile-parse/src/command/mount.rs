//! `RUN --mount` options: BuildKit's CSV fields and their meaning per
//! mount type.

use super::{CommandError, Mount, MountType, Sharing};
use crate::ast::Span;

/// Split a `--mount` value on commas, honouring double quotes like Go's
/// `encoding/csv`.
fn csv_fields(value: &str) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars().peekable();
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if at_start && c == '"' {
            at_start = false;
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        cur.push('"');
                    }
                    '"' => break,
                    c => cur.push(c),
                }
            }
            continue;
        }
        at_start = false;
        if c == ',' {
            fields.push(std::mem::take(&mut cur));
            at_start = true;
        } else {
            cur.push(c);
        }
    }
    fields.push(cur);
    Some(fields)
}

pub(super) fn parse_mount(value: &str, span: Span) -> Result<Mount, CommandError> {
    let err = |reason: &'static str| CommandError::Mount { value: value.to_string(), reason, span };
    let fields = csv_fields(value).ok_or_else(|| err("unterminated quote"))?;
    let mut m = Mount {
        kind: MountType::Bind,
        source: None,
        target: None,
        from: None,
        readonly: true,
        id: None,
        sharing: Sharing::Shared,
        mode: None,
        uid: None,
        gid: None,
        required: false,
        size: None,
        env: None,
    };
    // The type decides defaults, so find it first.
    let mut readonly: Option<bool> = None;
    for field in &fields {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.to_string())),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        if k == "type" {
            m.kind = match v.as_deref() {
                Some("bind") => MountType::Bind,
                Some("cache") => MountType::Cache,
                Some("tmpfs") => MountType::Tmpfs,
                Some("secret") => MountType::Secret,
                Some("ssh") => MountType::Ssh,
                _ => return Err(err("type must be bind, cache, tmpfs, secret or ssh")),
            };
        }
    }
    for field in &fields {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.to_string())),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let bool_value = |v: &Option<String>| -> Result<bool, CommandError> {
            match v.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("true" | "1") => Ok(true),
                Some("false" | "0") => Ok(false),
                Some(_) => Err(err("a boolean option has a value that is not a boolean")),
            }
        };
        let need = |v: Option<String>| v.ok_or_else(|| err("an option is missing its value"));
        match k.as_str() {
            "type" | "" => {}
            "source" | "src" => m.source = Some(need(v)?),
            "target" | "dst" | "destination" | "dest" => m.target = Some(need(v)?),
            "from" => m.from = Some(need(v)?),
            "readonly" | "ro" => readonly = Some(bool_value(&v)?),
            "readwrite" | "rw" => readonly = Some(!bool_value(&v)?),
            "id" => m.id = Some(need(v)?),
            "sharing" => {
                m.sharing = match need(v)?.as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    _ => return Err(err("sharing must be shared, private or locked")),
                };
            }
            "mode" => {
                let v = need(v)?;
                m.mode = Some(u32::from_str_radix(&v, 8).map_err(|_| err("mode must be octal"))?);
            }
            "uid" => m.uid = Some(need(v)?.parse().map_err(|_| err("uid must be a number"))?),
            "gid" => m.gid = Some(need(v)?.parse().map_err(|_| err("gid must be a number"))?),
            "required" => m.required = bool_value(&v)?,
            "size" => m.size = Some(need(v)?),
            "env" => m.env = Some(need(v)?),
            _ => return Err(err("unknown option")),
        }
    }
    m.readonly = readonly.unwrap_or(matches!(m.kind, MountType::Bind | MountType::Secret | MountType::Ssh));
    if m.target.is_none() && matches!(m.kind, MountType::Bind | MountType::Cache | MountType::Tmpfs) {
        return Err(err("target is required"));
    }
    if m.target.is_none() && m.kind == MountType::Secret && m.env.is_none() && m.id.is_none() {
        return Err(err("secret mount needs id, target or env"));
    }
    Ok(m)
}
