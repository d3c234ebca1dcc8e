//! Buildbot's result spec (`buildbot/data/connector.py: resultspec_from_jsonapi` and
//! `data/resultspec.py`): filters, `order`, `limit`, `offset`, `field` and `property` from the
//! query string, applied in memory to small collections or turned into an [`ApiQuery`] for SQL.

use std::cmp::Ordering;

use kiln_store::api_queries::{ApiCond, ApiOp, ApiQuery, ApiTable, ApiValue};
use serde_json::{Map, Value};

use super::ApiError;

/// The type of a field, for parsing filter values as Buildbot's `valueFromString` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FType {
    Int,
    Bool,
    Str,
    /// A list of integers: filter values are integers, `contains` tests membership.
    IntList,
    StrList,
    /// Selectable but not filterable (objects, lists of objects).
    Other,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub field: String,
    pub op: ApiOp,
    pub values: Vec<Value>,
}

/// A parsed query string.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Spec {
    pub fields: Option<Vec<String>>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    pub order: Vec<(String, bool)>,
    pub filters: Vec<Filter>,
    /// Names given with `property=` (`*` for all).
    pub properties: Vec<String>,
}

fn op_of(name: &str) -> Option<ApiOp> {
    Some(match name {
        "eq" => ApiOp::Eq,
        "ne" => ApiOp::Ne,
        "lt" => ApiOp::Lt,
        "le" => ApiOp::Le,
        "gt" => ApiOp::Gt,
        "ge" => ApiOp::Ge,
        "contains" => ApiOp::Contains,
        "in" => ApiOp::In,
        "notin" => ApiOp::NotIn,
        _ => return None,
    })
}

fn string2boolean(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

fn parse_value(t: FType, s: &str) -> Option<Value> {
    match t {
        // Python's int() accepts surrounding blanks and a leading +.
        FType::Int | FType::IntList => s.trim().parse::<i64>().ok().map(Value::from),
        FType::Bool => string2boolean(s).map(Value::Bool),
        FType::Str | FType::StrList => Some(Value::String(s.to_string())),
        FType::Other => None,
    }
}

/// Parses a raw query string against a resource's fields. `collection` is false for single
/// resources, which accept no filters (Buildbot: "this is not a collection").
pub fn parse(
    raw: Option<&str>,
    fields: &[(&str, FType)],
    collection: bool,
) -> Result<Spec, ApiError> {
    let ftype = |name: &str| fields.iter().find(|(f, _)| *f == name).map(|(_, t)| *t);
    let check = |name: &str| match ftype(name) {
        Some(_) => Ok(()),
        None => Err(ApiError::bad(format!("no such field '{name}'"))),
    };
    let mut spec = Spec::default();
    for (arg, vals) in group_args(raw) {
        match arg.as_str() {
            "order" => {
                for o in &vals {
                    let (name, desc) = match o.strip_prefix('-') {
                        Some(n) => (n, true),
                        None => (o.as_str(), false),
                    };
                    check(name)?;
                    spec.order.push((name.to_string(), desc));
                }
            }
            "field" => {
                vals.iter().try_for_each(|f| check(f))?;
                spec.fields = Some(vals);
            }
            "limit" => spec.limit = Some(parse_bound("limit", &vals[0], MAX_LIMIT)?),
            "offset" => spec.offset = Some(parse_bound("offset", &vals[0], MAX_OFFSET)?),
            "property" => spec.properties.extend(vals),
            _ => spec.filters.push(parse_filter(&arg, &vals, ftype)?),
        }
    }
    check_spec(&spec, collection)?;
    Ok(spec)
}

/// The query's arguments, repeated keys grouped, in the order they first appear (Twisted's
/// `request.args`).
fn group_args(raw: Option<&str>) -> Vec<(String, Vec<String>)> {
    let mut args: Vec<(String, Vec<String>)> = Vec::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match args.iter_mut().find(|(key, _)| *key == k) {
            Some((_, vs)) => vs.push(v.into_owned()),
            None => args.push((k.into_owned(), vec![v.into_owned()])),
        }
    }
    args
}

/// The most rows of a collection, or lines of a log's `contents`, one `limit` may ask for: a
/// page is built in memory. Without `limit` a collection or a log is answered whole, streamed.
pub const MAX_LIMIT: i64 = 100_000;

/// The largest `offset`: the largest integer JSON clients read exactly (2^53 - 1), and far
/// from overflowing `offset + limit`.
pub const MAX_OFFSET: i64 = (1 << 53) - 1;

/// `limit` or `offset` (`name`): Python's `int()`, which accepts surrounding blanks, from 0 to
/// `max`. Buildbot takes a negative or huge value and answers nonsense; Kiln refuses it and
/// says what it takes.
fn parse_bound(name: &str, v: &str, max: i64) -> Result<i64, ApiError> {
    let n: i64 = v.trim().parse().map_err(|_| {
        ApiError::bad(format!(
            "invalid {name} '{v}': not a whole number; {name} takes 0 to {max}"
        ))
    })?;
    if n < 0 {
        return Err(ApiError::bad(format!(
            "invalid {name} {n}: negative; {name} takes 0 to {max}"
        )));
    }
    if n > max {
        let hint = if name == "limit" {
            "; leave limit out to get the whole collection or log, streamed"
        } else {
            ""
        };
        return Err(ApiError::bad(format!(
            "invalid {name} {n}: more than {max}{hint}"
        )));
    }
    Ok(n)
}

/// A filter: `field=value` (equality) or `field__op=value`; several values for `eq`, `ne`,
/// `contains`, `in` and `notin` only; values parsed by the field's type.
fn parse_filter(
    arg: &str,
    vals: &[String],
    ftype: impl Fn(&str) -> Option<FType>,
) -> Result<Filter, ApiError> {
    let (field, op, t) = match ftype(arg) {
        Some(t) => (arg, ApiOp::Eq, t),
        None => {
            let parsed = arg.rsplit_once("__").and_then(|(f, op)| {
                let op = op_of(op)?;
                let plural_ok = matches!(
                    op,
                    ApiOp::Eq | ApiOp::Ne | ApiOp::Contains | ApiOp::In | ApiOp::NotIn
                );
                (vals.len() == 1 || plural_ok).then_some(())?;
                Some((f, op, ftype(f)?))
            });
            parsed.ok_or_else(|| ApiError::bad(format!("unrecognized query parameter '{arg}'")))?
        }
    };
    let values = vals
        .iter()
        .map(|v| parse_value(t, v))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| ApiError::bad(format!("invalid filter value for {arg}")))?;
    Ok(Filter {
        field: field.to_string(),
        op,
        values,
    })
}

/// What Buildbot refuses of a whole spec: ordering or filtering on fields not selected, and
/// filters on a single resource.
fn check_spec(spec: &Spec, collection: bool) -> Result<(), ApiError> {
    if let Some(sel) = &spec.fields {
        if spec.order.iter().any(|(o, _)| !sel.contains(o)) {
            return Err(ApiError::bad("cannot order on un-selected fields"));
        }
        if spec.filters.iter().any(|f| !sel.contains(&f.field)) {
            return Err(ApiError::bad("cannot filter on un-selected fields"));
        }
    }
    if !collection && !spec.filters.is_empty() {
        return Err(ApiError::bad("this is not a collection"));
    }
    Ok(())
}

/// Buildbot's `NoneComparator`: None sorts before everything.
fn cmp_json(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap_or(0.0)
            .partial_cmp(&y.as_f64().unwrap_or(0.0))
            .unwrap_or(Ordering::Equal),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let o = cmp_json(p, q);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        _ => Ordering::Equal,
    }
}

fn contains(d: &Value, v: &Value) -> bool {
    match (d, v) {
        (Value::String(s), Value::String(x)) => s.contains(x.as_str()),
        (Value::Array(a), x) => a.contains(x),
        _ => false,
    }
}

fn matches(d: &Value, f: &Filter) -> bool {
    let v = &f.values;
    let first = &v[0];
    if v.len() > 1 {
        return match f.op {
            ApiOp::Eq | ApiOp::In => v.contains(d),
            ApiOp::Ne | ApiOp::NotIn => !v.contains(d),
            ApiOp::Contains => v.iter().any(|x| contains(d, x)),
            _ => false,
        };
    }
    // Python 3 raises on `None < 1`; Buildbot answers 500. Comparisons with null are false here.
    let ordered = |want: &[Ordering]| !d.is_null() && want.contains(&cmp_json(d, first));
    match f.op {
        ApiOp::Eq => d == first,
        ApiOp::Ne => d != first,
        ApiOp::Lt => ordered(&[Ordering::Less]),
        ApiOp::Le => ordered(&[Ordering::Less, Ordering::Equal]),
        ApiOp::Gt => ordered(&[Ordering::Greater]),
        ApiOp::Ge => ordered(&[Ordering::Greater, Ordering::Equal]),
        ApiOp::Contains => contains(d, first),
        ApiOp::In => v.contains(d),
        ApiOp::NotIn => !v.contains(d),
    }
}

/// Keeps only the selected fields of an object.
pub fn select(spec: &Spec, mut obj: Map<String, Value>) -> Map<String, Value> {
    if let Some(sel) = &spec.fields {
        obj.retain(|k, _| sel.contains(k));
    }
    obj
}

/// Buildbot's `ResultSpec.apply` on a whole collection: filters, total, order, offset/limit,
/// fields. Returns the page and the total after filtering.
pub fn apply(spec: &Spec, rows: Vec<Map<String, Value>>) -> (Vec<Map<String, Value>>, usize) {
    let (page, total) = page_indices(spec, &rows);
    let mut rows: Vec<Option<Map<String, Value>>> = rows.into_iter().map(Some).collect();
    let page = page
        .into_iter()
        .filter_map(|i| rows[i].take())
        .map(|r| select(spec, r))
        .collect();
    (page, total)
}

/// A row's field; null when it has none.
fn field<'a>(row: &'a Map<String, Value>, name: &str) -> &'a Value {
    row.get(name).unwrap_or(&Value::Null)
}

/// [`apply`] without the field selection, as positions: which rows make the page, in order,
/// and how many matched the filters.
pub fn page_indices(spec: &Spec, rows: &[Map<String, Value>]) -> (Vec<usize>, usize) {
    let mut matching: Vec<usize> = (0..rows.len())
        .filter(|&i| {
            spec.filters
                .iter()
                .all(|f| matches(field(&rows[i], &f.field), f))
        })
        .collect();
    let total = matching.len();
    if !spec.order.is_empty() {
        matching.sort_by(|&a, &b| {
            for (k, desc) in &spec.order {
                let o = cmp_json(field(&rows[a], k), field(&rows[b], k));
                let o = if *desc { o.reverse() } else { o };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
    }
    let offset = spec.offset.unwrap_or(0).max(0) as usize;
    let limit = spec.limit.map_or(usize::MAX, |l| l.max(0) as usize);
    let page = matching.into_iter().skip(offset).take(limit).collect();
    (page, total)
}

fn to_api_value(v: &Value) -> ApiValue {
    match v {
        Value::Bool(b) => ApiValue::Int(*b as i64),
        Value::Number(n) => ApiValue::Int(n.as_i64().unwrap_or(0)),
        Value::String(s) => ApiValue::Str(s.clone()),
        other => ApiValue::Str(other.to_string()),
    }
}

/// The SQL form of a spec for one of the big tables; fields SQL cannot filter or order on are
/// refused with a 400 that names them.
pub fn to_sql(spec: &Spec, table: ApiTable, extra: Vec<ApiCond>) -> Result<ApiQuery, ApiError> {
    let known = |f: &str| table.sql_fields().iter().any(|(n, _)| *n == f);
    let mut conds = extra;
    for f in &spec.filters {
        if !known(&f.field) {
            return Err(ApiError::bad(format!(
                "cannot filter on '{}' here",
                f.field
            )));
        }
        if f.op == ApiOp::Contains && !f.values.iter().all(Value::is_string) {
            return Err(ApiError::bad(format!(
                "'{}__contains' needs a text field",
                f.field
            )));
        }
        conds.push(ApiCond {
            field: f.field.clone(),
            op: f.op,
            values: f.values.iter().map(to_api_value).collect(),
        });
    }
    for (o, _) in &spec.order {
        if !known(o) {
            return Err(ApiError::bad(format!("cannot order on '{o}' here")));
        }
    }
    Ok(ApiQuery {
        conds,
        order: spec.order.clone(),
        limit: spec.limit,
        offset: spec.offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: &[(&str, FType)] = &[
        ("id", FType::Int),
        ("name", FType::Str),
        ("ok", FType::Bool),
        ("tags", FType::StrList),
        ("res", FType::Int),
    ];

    fn rows() -> Vec<Map<String, Value>> {
        [
            serde_json::json!({"id": 1, "name": "a", "ok": true, "tags": ["x"], "res": 2}),
            serde_json::json!({"id": 2, "name": "b", "ok": false, "tags": ["x", "y"], "res": null}),
            serde_json::json!({"id": 3, "name": "c", "ok": true, "tags": [], "res": 0}),
        ]
        .into_iter()
        .map(|v| v.as_object().unwrap().clone())
        .collect()
    }

    fn ids(q: &str) -> (Vec<i64>, usize) {
        let spec = parse(Some(q), F, true).unwrap();
        let (r, total) = apply(&spec, rows());
        (r.iter().map(|o| o["id"].as_i64().unwrap()).collect(), total)
    }

    #[test]
    fn in_memory_filters_order_and_paging_follow_buildbot() {
        assert_eq!(ids("ok=yes"), (vec![1, 3], 2));
        assert_eq!(ids("ok=0"), (vec![2], 1));
        assert_eq!(ids("tags__contains=y"), (vec![2], 1));
        assert_eq!(ids("tags__contains=x&tags__contains=q"), (vec![1, 2], 2));
        assert_eq!(ids("name__ne=a&name__ne=b"), (vec![3], 1));
        assert_eq!(ids("id__gt=1&id__le=3"), (vec![2, 3], 2));
        // Python's `None != 0` holds; `None < 1` is no match here.
        assert_eq!(ids("res__ne=0"), (vec![1, 2], 2));
        assert_eq!(ids("res__lt=1"), (vec![3], 1));
        // None sorts first ascending and last descending.
        assert_eq!(ids("order=res"), (vec![2, 3, 1], 3));
        assert_eq!(ids("order=-res"), (vec![1, 3, 2], 3));
        assert_eq!(ids("order=-ok&order=-id&offset=1&limit=1"), (vec![1], 3));
        assert_eq!(ids("limit=0"), (vec![], 3));
    }

    #[test]
    fn selection_and_refusals() {
        let spec = parse(Some("field=id&field=name&order=-id&limit=1"), F, true).unwrap();
        let (r, _) = apply(&spec, rows());
        assert_eq!(
            Value::Object(r[0].clone()),
            serde_json::json!({"id": 3, "name": "c"})
        );
        for (q, msg) in [
            ("id=x", "invalid filter value for id"),
            ("nope=1", "unrecognized query parameter 'nope'"),
            ("id__gt=1&id__gt=2", "unrecognized query parameter 'id__gt'"),
            ("field=nope", "no such field 'nope'"),
            (
                "offset=x",
                "invalid offset 'x': not a whole number; offset takes 0 to 9007199254740991",
            ),
            (
                "limit=-1",
                "invalid limit -1: negative; limit takes 0 to 100000",
            ),
            (
                "offset=-5",
                "invalid offset -5: negative; offset takes 0 to 9007199254740991",
            ),
            (
                "limit=abc",
                "invalid limit 'abc': not a whole number; limit takes 0 to 100000",
            ),
            (
                "limit=100001",
                "invalid limit 100001: more than 100000; leave limit out to get the whole collection or log, streamed",
            ),
            (
                "offset=9007199254740992",
                "invalid offset 9007199254740992: more than 9007199254740991",
            ),
        ] {
            assert_eq!(parse(Some(q), F, true).unwrap_err().to_string(), msg, "{q}");
        }
        assert_eq!(
            parse(Some("id=1"), F, false).unwrap_err().to_string(),
            "this is not a collection"
        );
        assert!(parse(Some("limit=5&offset=2"), F, false).is_ok());
        assert!(parse(Some("limit=%20100000&offset=0"), F, true).is_ok());
    }
}
