//! Evaluating `master.star`: the builtins, and the walk from Starlark values to typed config.
//!
//! Every constructor builds its typed Rust value at the call, so a bad argument is reported at
//! the call's `file:line:col`. It hands back the value as a plain Starlark dict (its JSON form,
//! with `_loc`), which the user may pass around freely; the final config is deserialized from
//! the well-known globals.

use std::cell::RefCell;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json, json};
use starlark::collections::SmallMap;
use starlark::environment::{GlobalsBuilder, LibraryExtension};
use starlark::eval::Evaluator;
use starlark::starlark_module;
use starlark::values::dict::DictRef;
use starlark::values::list::ListRef;
use starlark::values::tuple::TupleRef;
use starlark::values::{Heap, Value};

use crate::types::*;

thread_local! {
    /// Secrets named during the current evaluation, with where they were named.
    pub(crate) static SECRET_USES: RefCell<Vec<(String, Loc)>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn loc_of(eval: &Evaluator<'_, '_, '_>) -> Loc {
    eval.call_stack_top_location()
        .map(|s| {
            let r = s.resolve();
            Loc {
                file: r.file,
                line: r.span.begin.line + 1,
                col: r.span.begin.column + 1,
            }
        })
        .unwrap_or_default()
}

/// Starlark value → JSON. Dicts may have int keys (for `decode_rc`); `None` values in dicts stay.
pub(crate) fn to_json(v: Value) -> anyhow::Result<Json> {
    // The common leaves first, without going through serde.
    if let Some(s) = v.unpack_str() {
        return Ok(Json::String(s.to_string()));
    }
    if v.is_none() {
        return Ok(Json::Null);
    }
    if let Some(b) = v.unpack_bool() {
        return Ok(Json::Bool(b));
    }
    if let Some(i) = v.unpack_i32() {
        return Ok(Json::from(i));
    }
    if let Some(d) = DictRef::from_value(v) {
        let mut m = Map::new();
        for (k, x) in d.iter() {
            let key = if let Some(s) = k.unpack_str() {
                s.to_string()
            } else if let Some(i) = k.unpack_i32() {
                i.to_string()
            } else {
                anyhow::bail!(
                    "dictionary keys must be strings (or exit codes in decode_rc), got {}",
                    k.get_type()
                );
            };
            m.insert(key, to_json(x)?);
        }
        return Ok(Json::Object(m));
    }
    if let Some(l) = ListRef::from_value(v) {
        return l
            .iter()
            .map(to_json)
            .collect::<anyhow::Result<Vec<_>>>()
            .map(Json::Array);
    }
    if let Some(t) = TupleRef::from_value(v) {
        return t
            .iter()
            .map(to_json)
            .collect::<anyhow::Result<Vec<_>>>()
            .map(Json::Array);
    }
    if v.get_type() == "function" {
        anyhow::bail!(
            "functions cannot be stored in the config (they run only while master.star loads); for do_step_if use prop(\"x\"), prop_equals(...) or prop_not_equals(...)"
        );
    }
    v.to_json_value()
}

fn kwargs_json(kwargs: SmallMap<String, Value>) -> anyhow::Result<Map<String, Json>> {
    let mut m = Map::new();
    for (k, v) in kwargs {
        if v.is_none() {
            continue;
        }
        let j = to_json(v).map_err(|e| anyhow::anyhow!("argument `{k}`: {e}"))?;
        m.insert(k, j);
    }
    Ok(m)
}

/// Deserializes `j` as `T`, with the failing path in the message; `what` names the call.
pub(crate) fn typed<T: DeserializeOwned>(what: &str, j: &Json) -> anyhow::Result<T> {
    serde_path_to_error::deserialize(j).map_err(|e| {
        let path = e.path().to_string();
        // Paths inside a step/scheduler are `kind.<kind>.arg` or `flags.arg`: show just the argument.
        let mut segs: Vec<&str> = path.split('.').collect();
        let segs_were_step = segs.first() == Some(&"kind") && STEP_KINDS.contains(&segs.get(1).copied().unwrap_or(""));
        if segs.first() == Some(&"kind") && segs.len() >= 2 {
            segs.drain(..2);
        } else if segs.first() == Some(&"flags") {
            segs.drain(..1);
        }
        let path = segs.join(".");
        let inner = e.into_inner().to_string();
        if inner.starts_with("unknown field") {
            let flags = if segs_were_step { format!(", or a step flag: {}", STEP_FLAGS.join(", ")) } else { String::new() };
            return anyhow::anyhow!("{what}(): {}{flags}", inner.replace("unknown field", "unknown argument"));
        }
        if path.starts_with("decode_rc") {
            return anyhow::anyhow!("{what}(): `{path}`: {inner}; decode_rc maps exit codes to results, e.g. {{0: SUCCESS, 5: WARNINGS}}");
        }
        if path.is_empty() || path == "?" {
            anyhow::anyhow!("{what}(): {inner}")
        } else {
            anyhow::anyhow!("{what}(): `{path}`: {inner}")
        }
    })
}

/// Checks `j` as a `T` and hands the checked arguments back to Starlark (defaults are filled in
/// by the final deserialization, which keeps the values small).
fn finish<'v, T: DeserializeOwned>(
    what: &str,
    j: Json,
    heap: Heap<'v>,
) -> anyhow::Result<Value<'v>> {
    let _: T = typed(what, &j)?;
    Ok(heap.alloc(j))
}

fn take_name(what: &str, pos: Option<String>, m: &mut Map<String, Json>) -> anyhow::Result<()> {
    if let Some(n) = pos {
        if m.contains_key("name") {
            anyhow::bail!("{what}(): name given twice (positionally and as name=)");
        }
        m.insert("name".into(), Json::String(n));
    }
    Ok(())
}

/// `locks=[...]` items may be bare locks (counting access).
fn normalize_locks(m: &mut Map<String, Json>) {
    if let Some(Json::Array(items)) = m.get_mut("locks") {
        for it in items.iter_mut() {
            if it.get("scope").is_some() && it.get("access").is_none() {
                *it = json!({ "lock": it.take(), "access": "counting" });
            }
        }
    }
}

const STEP_KINDS: &[&str] = &[
    "shell",
    "configure",
    "compile",
    "test",
    "git",
    "set_property_from_command",
    "file_upload",
    "directory_upload",
    "file_download",
    "string_download",
    "mkdir",
    "rmdir",
    "rmfile",
    "trigger",
];

const STEP_FLAGS: &[&str] = &[
    "halt_on_failure",
    "flunk_on_failure",
    "warn_on_failure",
    "always_run",
    "do_step_if",
    "timeout",
    "max_time",
    "sigterm_time",
    "env",
    "workdir",
    "description",
    "description_done",
    "locks",
];

fn make_step<'v>(
    kind: &str,
    kwargs: SmallMap<String, Value<'v>>,
    eval: &mut Evaluator<'v, '_, '_>,
) -> anyhow::Result<Value<'v>> {
    let loc = loc_of(eval);
    let mut m = kwargs_json(kwargs)?;
    normalize_locks(&mut m);
    let name = m
        .remove("name")
        .unwrap_or_else(|| Json::String(kind.to_string()));
    let mut flags = Map::new();
    for f in STEP_FLAGS {
        if let Some(v) = m.remove(*f) {
            flags.insert(f.to_string(), v);
        }
    }
    // `do_step_if=prop("x")` arrives as the prop dict `{"__prop": "x", "default": ...}`, which is
    // also the shape of a property condition.
    let j = json!({ "name": name, "kind": { kind: m }, "flags": flags, "_loc": loc });
    finish::<Step>(kind, j, eval.heap())
}

const SCHED_COMMON: &[&str] = &["name", "builder_names", "properties", "priority"];

fn make_scheduler<'v>(
    kind: &str,
    name: Option<String>,
    kwargs: SmallMap<String, Value<'v>>,
    eval: &mut Evaluator<'v, '_, '_>,
) -> anyhow::Result<Value<'v>> {
    let loc = loc_of(eval);
    let mut m = kwargs_json(kwargs)?;
    take_name(kind, name, &mut m)?;
    let mut top = Map::new();
    for f in SCHED_COMMON {
        if let Some(v) = m.remove(*f) {
            top.insert(f.to_string(), v);
        }
    }
    top.insert("kind".into(), json!({ kind: m }));
    top.insert("_loc".into(), serde_json::to_value(&loc)?);
    finish::<Scheduler>(kind, Json::Object(top), eval.heap())
}

fn make_param<'v>(
    ty: &str,
    name: String,
    kwargs: SmallMap<String, Value<'v>>,
    heap: Heap<'v>,
) -> anyhow::Result<Value<'v>> {
    let mut m = kwargs_json(kwargs)?;
    m.insert("name".into(), Json::String(name));
    m.insert("type".into(), Json::String(ty.into()));
    let what = format!("{ty}_param");
    let p: ForceParam = typed(&what, &Json::Object(m))?;
    if p.kind == ForceParamType::Choice && p.choices.is_empty() {
        anyhow::bail!("choice_param(): give choices=[...]");
    }
    Ok(heap.alloc(serde_json::to_value(&p)?))
}

fn make_lock<'v>(
    scope: &str,
    name: String,
    kwargs: SmallMap<String, Value<'v>>,
    eval: &mut Evaluator<'v, '_, '_>,
) -> anyhow::Result<Value<'v>> {
    let loc = loc_of(eval);
    let mut m = kwargs_json(kwargs)?;
    m.insert("name".into(), Json::String(name));
    m.insert("scope".into(), Json::String(scope.into()));
    m.insert("_loc".into(), serde_json::to_value(&loc)?);
    let what = format!("{scope}_lock");
    let l: Lock = typed(&what, &Json::Object(m))?;
    if l.max_count == 0 {
        anyhow::bail!("{what}(): max_count must be at least 1");
    }
    if scope == "master" && !l.max_count_for_worker.is_empty() {
        anyhow::bail!("master_lock(): max_count_for_worker is only for worker_lock()");
    }
    Ok(eval.heap().alloc(serde_json::to_value(&l)?))
}

fn access<'v>(mode: &str, lock: Value<'v>, heap: Heap<'v>) -> anyhow::Result<Value<'v>> {
    let l: Lock = typed(mode, &to_json(lock)?).map_err(|_| {
        anyhow::anyhow!("{mode}(): expected a lock made by master_lock(...) or worker_lock(...)")
    })?;
    Ok(heap.alloc(json!({ "lock": l, "access": mode })))
}

fn record_secrets(r: &Renderable, loc: &Loc) {
    let mut names = Vec::new();
    r.secret_names(&mut names);
    SECRET_USES.with(|s| {
        s.borrow_mut()
            .extend(names.into_iter().map(|n| (n, loc.clone())))
    });
}

#[starlark_module]
fn kiln_builtins(builder: &mut GlobalsBuilder) {
    /// Settings of the master itself.
    fn master<'v>(
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        let loc = loc_of(eval);
        let mut m = kwargs_json(kwargs)?;
        m.insert("_loc".into(), serde_json::to_value(&loc)?);
        finish::<MasterSettings>("master", Json::Object(m), eval.heap())
    }

    /// A worker: `worker("name", password=secret("name"), max_builds=2, ...)`.
    fn worker<'v>(
        #[starlark(require = pos)] name: Option<String>,
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        let loc = loc_of(eval);
        let mut m = kwargs_json(kwargs)?;
        take_name("worker", name, &mut m)?;
        m.insert("_loc".into(), serde_json::to_value(&loc)?);
        let w: Worker = typed("worker", &Json::Object(m))?;
        match (&w.password, &w.password_hash) {
            (Some(_), Some(_)) => {
                anyhow::bail!("worker(): give password= or password_hash=, not both")
            }
            (None, None) => anyhow::bail!(
                "worker(): give password=secret(\"...\") or password_hash=\"$argon2id$...\""
            ),
            (None, Some(h)) if !h.starts_with("$argon2") => {
                anyhow::bail!(
                    "worker(): password_hash must be an argon2 PHC string (\"$argon2id$v=19$...\"); for a plain password use password=secret(\"...\")"
                )
            }
            _ => {}
        }
        Ok(eval.heap().alloc(serde_json::to_value(&w)?))
    }

    /// A reference to a secret, read from the secrets directory or `KILN_SECRET_<NAME>`.
    fn secret<'v>(
        #[starlark(require = pos)] name: String,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            || name.starts_with('.')
        {
            anyhow::bail!("secret(): bad name {name:?}: use letters, digits, `_`, `-` and `.`");
        }
        let loc = loc_of(eval);
        record_secrets(&Renderable::Secret(name.clone()), &loc);
        Ok(eval.heap().alloc(json!({ "__secret": name })))
    }

    /// A string rendered at build time: `interpolate("%(prop:x)s-%(kw:y)s", y="...")`.
    fn interpolate<'v>(
        #[starlark(require = pos)] format: String,
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        let loc = loc_of(eval);
        let kw = kwargs_json(kwargs)?;
        let j = json!({ "__interpolate": format, "kwargs": kw });
        let r = Renderable::from_json(j).map_err(|e| anyhow::anyhow!("interpolate(): {e}"))?;
        record_secrets(&r, &loc);
        Ok(eval.heap().alloc(r.to_json()))
    }

    /// A property's value at build time (also a truthiness test for `do_step_if`).
    fn prop<'v>(
        #[starlark(require = pos)] name: String,
        default: Option<Value<'v>>,
        heap: Heap<'v>,
    ) -> anyhow::Result<Value<'v>> {
        let d = match default {
            Some(v) if !v.is_none() => to_json(v)?,
            _ => Json::Null,
        };
        Ok(heap.alloc(json!({ "__prop": name, "default": d })))
    }

    /// `do_step_if=prop_equals("x", value)`
    fn prop_equals<'v>(
        #[starlark(require = pos)] name: String,
        #[starlark(require = pos)] value: Value<'v>,
        heap: Heap<'v>,
    ) -> anyhow::Result<Value<'v>> {
        Ok(heap.alloc(json!({ "__prop": name, "equals": to_json(value)? })))
    }

    /// `do_step_if=prop_not_equals("x", value)`
    fn prop_not_equals<'v>(
        #[starlark(require = pos)] name: String,
        #[starlark(require = pos)] value: Value<'v>,
        heap: Heap<'v>,
    ) -> anyhow::Result<Value<'v>> {
        Ok(heap.alloc(json!({ "__prop": name, "not_equals": to_json(value)? })))
    }

    /// A builder: `builder(name=..., workers=[...], steps=[...], ...)`.
    fn builder<'v>(
        #[starlark(require = pos)] name: Option<String>,
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        let loc = loc_of(eval);
        let mut m = kwargs_json(kwargs)?;
        take_name("builder", name, &mut m)?;
        normalize_locks(&mut m);
        // workers may be given as worker(...) values as well as names
        if let Some(Json::Array(ws)) = m.get_mut("workers") {
            for w in ws.iter_mut() {
                if let Some(n) = w.get("name").cloned() {
                    *w = n;
                }
            }
        }
        m.insert("_loc".into(), serde_json::to_value(&loc)?);
        finish::<Builder>("builder", Json::Object(m), eval.heap())
    }

    fn shell<'v>(
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_step("shell", kwargs, eval)
    }
    fn configure<'v>(
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_step("configure", kwargs, eval)
    }
    fn compile<'v>(
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_step("compile", kwargs, eval)
    }
    fn test<'v>(
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_step("test", kwargs, eval)
    }
    fn git<'v>(
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        let v = make_step("git", kwargs, eval)?;
        let s: Step = serde_json::from_value(v.to_json_value()?)?;
        if let StepKind::Git(g) = &s.kind
            && g.mode == GitMode::Incremental
            && g.method.is_some()
        {
            anyhow::bail!(
                "git(): method= applies only to mode=\"full\" (fresh, clean, clobber or copy)"
            );
        }
        Ok(v)
    }
    fn set_property_from_command<'v>(
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_step("set_property_from_command", kwargs, eval)
    }
    fn file_upload<'v>(
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_step("file_upload", kwargs, eval)
    }
    fn directory_upload<'v>(
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_step("directory_upload", kwargs, eval)
    }
    fn file_download<'v>(
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_step("file_download", kwargs, eval)
    }
    fn string_download<'v>(
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_step("string_download", kwargs, eval)
    }
    fn mkdir<'v>(
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_step("mkdir", kwargs, eval)
    }
    fn rmdir<'v>(
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_step("rmdir", kwargs, eval)
    }
    fn rmfile<'v>(
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_step("rmfile", kwargs, eval)
    }
    fn trigger<'v>(
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_step("trigger", kwargs, eval)
    }

    fn force<'v>(
        #[starlark(require = pos)] name: Option<String>,
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_scheduler("force", name, kwargs, eval)
    }
    fn single_branch<'v>(
        #[starlark(require = pos)] name: Option<String>,
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_scheduler("single_branch", name, kwargs, eval)
    }
    fn any_branch<'v>(
        #[starlark(require = pos)] name: Option<String>,
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_scheduler("any_branch", name, kwargs, eval)
    }
    fn nightly<'v>(
        #[starlark(require = pos)] name: Option<String>,
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_scheduler("nightly", name, kwargs, eval)
    }
    fn periodic<'v>(
        #[starlark(require = pos)] name: Option<String>,
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_scheduler("periodic", name, kwargs, eval)
    }
    fn triggerable<'v>(
        #[starlark(require = pos)] name: Option<String>,
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_scheduler("triggerable", name, kwargs, eval)
    }
    fn dependent<'v>(
        #[starlark(require = pos)] name: Option<String>,
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_scheduler("dependent", name, kwargs, eval)
    }

    fn string_param<'v>(
        #[starlark(require = pos)] name: String,
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        heap: Heap<'v>,
    ) -> anyhow::Result<Value<'v>> {
        make_param("string", name, kwargs, heap)
    }
    fn text_param<'v>(
        #[starlark(require = pos)] name: String,
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        heap: Heap<'v>,
    ) -> anyhow::Result<Value<'v>> {
        make_param("text", name, kwargs, heap)
    }
    fn int_param<'v>(
        #[starlark(require = pos)] name: String,
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        heap: Heap<'v>,
    ) -> anyhow::Result<Value<'v>> {
        make_param("int", name, kwargs, heap)
    }
    fn bool_param<'v>(
        #[starlark(require = pos)] name: String,
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        heap: Heap<'v>,
    ) -> anyhow::Result<Value<'v>> {
        make_param("bool", name, kwargs, heap)
    }
    fn choice_param<'v>(
        #[starlark(require = pos)] name: String,
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        heap: Heap<'v>,
    ) -> anyhow::Result<Value<'v>> {
        make_param("choice", name, kwargs, heap)
    }

    fn master_lock<'v>(
        #[starlark(require = pos)] name: String,
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_lock("master", name, kwargs, eval)
    }
    fn worker_lock<'v>(
        #[starlark(require = pos)] name: String,
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<Value<'v>> {
        make_lock("worker", name, kwargs, eval)
    }
    /// Shared access to a lock (up to `max_count` holders).
    fn counting<'v>(
        #[starlark(require = pos)] lock: Value<'v>,
        heap: Heap<'v>,
    ) -> anyhow::Result<Value<'v>> {
        access("counting", lock, heap)
    }
    /// Sole access to a lock.
    fn exclusive<'v>(
        #[starlark(require = pos)] lock: Value<'v>,
        heap: Heap<'v>,
    ) -> anyhow::Result<Value<'v>> {
        access("exclusive", lock, heap)
    }
}

/// The globals `master.star` sees: the standard extended set plus Kiln's builtins and result
/// constants (`SUCCESS` = 0 … `CANCELLED` = 6).
pub(crate) fn globals() -> starlark::environment::Globals {
    let mut g = GlobalsBuilder::extended_by(&[
        LibraryExtension::StructType,
        LibraryExtension::Json,
        LibraryExtension::Print,
        LibraryExtension::Map,
        LibraryExtension::Filter,
        LibraryExtension::Partial,
        LibraryExtension::Debug,
    ])
    .with(kiln_builtins);
    for r in kiln_model::Results::ALL {
        g.set(r.name(), r as i32);
    }
    g.build()
}

/// `load("lib/platforms.star", "PLATFORMS")`: files relative to the config's directory, each
/// evaluated once with the same builtins and frozen (immutable to the loader).
pub(crate) struct Loader<'g> {
    pub(crate) root: Option<std::path::PathBuf>,
    pub(crate) globals: &'g starlark::environment::Globals,
    limits: Limits,
    cache:
        RefCell<std::collections::HashMap<std::path::PathBuf, starlark::environment::FrozenModule>>,
    stack: RefCell<Vec<std::path::PathBuf>>,
}

impl<'g> Loader<'g> {
    pub(crate) fn new(
        root: Option<std::path::PathBuf>,
        globals: &'g starlark::environment::Globals,
        limits: Limits,
    ) -> Self {
        Loader {
            root,
            globals,
            limits,
            cache: RefCell::default(),
            stack: RefCell::default(),
        }
    }
}

/// Evaluation limits: a wall-clock deadline and a tick budget.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) deadline: Option<std::time::Instant>,
    pub(crate) max_ticks: Option<u64>,
}

impl Limits {
    pub(crate) fn apply(&self, ev: &mut Evaluator<'_, '_, '_>) -> anyhow::Result<()> {
        if let Some(t) = self.max_ticks {
            ev.set_max_tick_count(t)?;
        }
        if let Some(d) = self.deadline {
            ev.set_check_cancelled(Box::new(move || std::time::Instant::now() > d));
        }
        Ok(())
    }
}

impl starlark::eval::FileLoader for Loader<'_> {
    fn load(&self, path: &str) -> starlark::Result<starlark::environment::FrozenModule> {
        use std::path::{Component, Path};
        let other = |m: String| starlark::Error::new_other(anyhow::anyhow!(m));
        let rel = Path::new(path);
        if !path.ends_with(".star")
            || rel
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(other(format!(
                "load({path:?}): give a path relative to the config's directory, ending in .star, without `..`"
            )));
        }
        let Some(root) = &self.root else {
            return Err(other(format!(
                "load({path:?}): this config has no directory to load from"
            )));
        };
        let full = root.join(rel);
        if let Some(m) = self.cache.borrow().get(&full) {
            return Ok(m.clone());
        }
        if self.stack.borrow().contains(&full) {
            return Err(other(format!(
                "load({path:?}): files load each other in a cycle"
            )));
        }
        let src = std::fs::read_to_string(&full).map_err(|e| {
            other(format!(
                "load({path:?}): cannot read {}: {e}",
                full.display()
            ))
        })?;
        let ast = starlark::syntax::AstModule::parse(
            &full.display().to_string(),
            src,
            &starlark::syntax::Dialect::Extended,
        )?;
        self.stack.borrow_mut().push(full.clone());
        let res = starlark::environment::Module::with_temp_heap(|m| -> starlark::Result<_> {
            {
                let mut ev = Evaluator::new(&m);
                ev.set_loader(self);
                self.limits
                    .apply(&mut ev)
                    .map_err(starlark::Error::new_other)?;
                ev.eval_module(ast, self.globals)?;
            }
            m.freeze()
                .map_err(|e| other(format!("load({path:?}): {e:?}")))
        });
        self.stack.borrow_mut().pop();
        let m = res?;
        self.cache.borrow_mut().insert(full, m.clone());
        Ok(m)
    }
}
