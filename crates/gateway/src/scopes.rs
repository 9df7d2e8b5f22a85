//! Which scopes an operation needs: the base scopes of every request, the extra scopes of
//! each tool (ordered rules, first match wins), and the scope hierarchy (a broader scope
//! implies narrower ones, MCP 2026-07-28 authorization).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Never advertised nor challenged for: refresh tokens are not a resource requirement
/// (MCP 2026-07-28, SEP-2207).
pub const OFFLINE_ACCESS: &str = "offline_access";

/// One rule: tools whose name matches `name` (exact, or a glob with `*` and `?`) need
/// `scopes` besides the base scopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolRule {
    pub name: String,
    pub scopes: Vec<String>,
}

/// The per-tool rules and the hierarchy, as the operator writes them into the pod
/// (`MCP_SCOPE_RULES`, JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeRules {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolRule>,
    /// `scope → scopes it implies` (e.g. `mcp:admin → [mcp:tools]`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub implies: BTreeMap<String, Vec<String>>,
}

impl ScopeRules {
    /// Parses `MCP_SCOPE_RULES`; empty means no rules.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.trim().is_empty() {
            return Ok(Self::default());
        }
        let rules: Self =
            serde_json::from_str(raw).map_err(|e| format!("invalid scope rules: {e}"))?;
        let scopes = rules.tools.iter().flat_map(|r| &r.scopes).chain(
            rules
                .implies
                .iter()
                .flat_map(|(k, v)| std::iter::once(k).chain(v)),
        );
        for scope in scopes {
            if !is_scope_token(scope) {
                return Err(format!("invalid scope {scope:?} in the scope rules"));
            }
        }
        if let Some(rule) = rules.tools.iter().find(|r| r.name.is_empty()) {
            return Err(format!("a tool rule has an empty name ({rule:?})"));
        }
        Ok(rules)
    }

    /// Whether any tool needs more than the base scopes (tool lists are then filtered).
    pub fn per_tool(&self) -> bool {
        self.tools.iter().any(|r| !r.scopes.is_empty())
    }

    /// The extra scopes of `tool`: those of the first rule matching it, else none.
    pub fn tool_scopes(&self, tool: &str) -> &[String] {
        self.tools
            .iter()
            .find(|r| glob_match(&r.name, tool))
            .map_or(&[], |r| r.scopes.as_slice())
    }

    /// Every scope the rules name (for `scopes_supported`), in rule order.
    pub fn named_scopes(&self) -> impl Iterator<Item = &String> {
        self.tools.iter().flat_map(|r| &r.scopes)
    }

    /// `granted` plus everything it implies, transitively.
    pub fn effective<'a>(&'a self, granted: &'a [String]) -> BTreeSet<&'a str> {
        let mut have: BTreeSet<&str> = BTreeSet::new();
        let mut todo: Vec<&str> = granted.iter().map(String::as_str).collect();
        while let Some(scope) = todo.pop() {
            if have.insert(scope) {
                if let Some(implied) = self.implies.get(scope) {
                    todo.extend(implied.iter().map(String::as_str));
                }
            }
        }
        have
    }

    /// Whether `granted` (with the hierarchy) covers every scope of `needed`.
    pub fn satisfied(&self, granted: &[String], needed: &[String]) -> bool {
        let have = self.effective(granted);
        needed.iter().all(|n| have.contains(n.as_str()))
    }

    /// Whether a token with `granted` may call `tool` (base scopes already checked).
    pub fn may_call(&self, granted: &[String], tool: &str) -> bool {
        self.satisfied(granted, self.tool_scopes(tool))
    }
}

/// `base`, then each of `extra` not yet listed, without `offline_access`: the one list a
/// challenge names for an operation (MCP 2026-07-28: all of them in one challenge).
pub fn challenge_scopes<'a>(
    base: &'a [String],
    extra: impl IntoIterator<Item = &'a String>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for scope in base.iter().chain(extra) {
        if scope != OFFLINE_ACCESS && !out.contains(scope) {
            out.push(scope.clone());
        }
    }
    out
}

/// RFC 6749 `scope-token`: printable ASCII without space, `"` and `\`.
pub fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// Glob match with `*` (any run, also empty) and `?` (one character); everything else is
/// literal. Iterative with one backtrack point, so no pattern is exponential.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == n[ni])) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(list: &[&str]) -> Vec<String> {
        list.iter().map(|x| x.to_string()).collect()
    }

    fn rules() -> ScopeRules {
        ScopeRules::parse(
            r#"{"tools":[{"name":"delete_*","scopes":["mcp:admin"]},
                         {"name":"get-sum","scopes":["mcp:math","mcp:admin"]},
                         {"name":"*","scopes":[]}],
                "implies":{"mcp:root":["mcp:admin"],"mcp:admin":["mcp:math"]}}"#,
        )
        .unwrap()
    }

    #[test]
    fn globs() {
        for (p, n, want) in [
            ("echo", "echo", true),
            ("echo", "echo2", false),
            ("delete_*", "delete_all", true),
            ("delete_*", "delete_", true),
            ("delete_*", "undelete_x", false),
            ("*_admin", "user_admin", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("ü*", "über", true),
        ] {
            assert_eq!(glob_match(p, n), want, "{p} ~ {n}");
        }
        // Linear in practice: a pathological pattern answers at once.
        let name = "a".repeat(5000);
        assert!(!glob_match(&format!("{}b", "*a".repeat(50)), &name));
    }

    #[test]
    fn first_matching_rule_decides() {
        let r = rules();
        assert_eq!(r.tool_scopes("delete_user"), s(&["mcp:admin"]));
        assert_eq!(r.tool_scopes("get-sum"), s(&["mcp:math", "mcp:admin"]));
        assert!(r.tool_scopes("echo").is_empty());
        let r2 = ScopeRules::parse(r#"{"tools":[{"name":"x","scopes":["a"]}]}"#).unwrap();
        assert!(r2.tool_scopes("y").is_empty());
        assert!(r.per_tool());
        assert!(!ScopeRules::default().per_tool());
    }

    #[test]
    fn hierarchy_is_transitive() {
        let r = rules();
        assert!(r.may_call(&s(&["mcp:root"]), "get-sum"));
        assert!(r.may_call(&s(&["mcp:admin"]), "get-sum"));
        assert!(!r.may_call(&s(&["mcp:math"]), "get-sum"));
        assert!(!r.may_call(&s(&["mcp:tools"]), "delete_x"));
        assert!(r.may_call(&s(&["mcp:tools"]), "echo"));
        // Without the hierarchy, the narrow scope alone is needed.
        let flat = ScopeRules {
            implies: BTreeMap::new(),
            ..rules()
        };
        assert!(!flat.may_call(&s(&["mcp:root"]), "get-sum"));
    }

    #[test]
    fn challenge_lists_everything_once_without_offline_access() {
        let base = s(&["mcp:tools", "offline_access"]);
        let extra = s(&["mcp:admin", "mcp:tools"]);
        assert_eq!(
            challenge_scopes(&base, &extra),
            s(&["mcp:tools", "mcp:admin"])
        );
    }

    #[test]
    fn bad_rules_are_refused() {
        assert_eq!(ScopeRules::parse("").unwrap(), ScopeRules::default());
        for bad in [
            "{",
            r#"{"tools":[{"name":"x","scopes":["a b"]}]}"#,
            r#"{"tools":[{"name":"","scopes":["a"]}]}"#,
            r#"{"implies":{"a":["b\"c"]}}"#,
        ] {
            assert!(ScopeRules::parse(bad).is_err(), "{bad}");
        }
    }
}
