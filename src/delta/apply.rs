//! `base + Delta(delta)` as deepdiff computes it (mutate=False,
//! raise_errors=False, log_errors=True), step by step and quirk by quirk.
//! Failed reads and writes are logged and skipped, exactly where deepdiff
//! logs and skips; what deepdiff lets escape aborts the whole patch.

use std::borrow::Cow;

use super::path::{self, Action, Dialect, Element};
use super::pyops::{self, PyErr, PyResult, Removed, Written, py_eq};
use super::sort::py_sorted;
use super::{Delta, IndexedItems, Opcode, Path};
use crate::pickle::{BuiltinType, Global, Value};

/// Why a patch was aborted: the exception Python would raise.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Abort(pub String);

fn abort<T>(msg: impl Into<String>) -> Result<T, Abort> {
    Err(Abort(msg.into()))
}

struct Details {
    elements: Vec<Element>,
}

impl Details {
    fn n(&self) -> usize {
        self.elements.len()
    }
    fn obj_loc(&self) -> &[Element] {
        &self.elements[..self.n() - 1]
    }
    fn elem(&self) -> &Element {
        &self.elements[self.n() - 1]
    }
}

struct Patcher<'d> {
    root: Value,
    dialect: Dialect,
    /// `post_process_paths_to_convert`: containers turned from tuple to list.
    post: Vec<Vec<Element>>,
    in_post: bool,
    /// While post-processing: how many entries the iteration will visit.
    post_end: usize,
    /// While post-processing: the entry being processed.
    post_cursor: usize,
    log: &'d mut Vec<String>,
    /// Every write to the tree, to take back in reverse if Python aborts.
    undo: Vec<Undo>,
}

/// The object at a location, to write into.
fn locate<'v>(root: &'v mut Value, loc: &[Element]) -> PyResult<&'v mut Value> {
    let Some((first, rest)) = loc.split_first() else {
        return Err(PyErr::Type("the Delta object itself is not data"));
    };
    if !is_root_elem(first) {
        return Err(PyErr::Attribute);
    }
    let mut cur = root;
    for (key, action) in rest {
        if *action == Action::GetAttr {
            return Err(PyErr::Attribute);
        }
        cur = pyops::get_item_mut(cur, key)?;
    }
    Ok(cur)
}

/// How to take one write back. Locations resolve to the same container
/// when the log is unwound in reverse, since each step restores the exact
/// tree the write saw.
#[derive(Debug)]
enum Undo {
    Root(Value),
    Written(Vec<Element>, Written),
    /// A list item appended past the end.
    Pushed(Vec<Element>),
    Removed(Vec<Element>, Removed),
    Inserted(Vec<Element>, usize),
    Replaced(Vec<Element>, Vec<Value>),
}

impl Undo {
    fn revert(self, root: &mut Value) -> PyResult<()> {
        const MISMATCH: PyErr = PyErr::Type("the undo log does not match the tree");
        match self {
            Undo::Root(old) => *root = old,
            Undo::Written(loc, Written::Replaced(i, old)) => match locate(root, &loc)? {
                Value::Dict(items) => items.get_mut(i).ok_or(MISMATCH)?.1 = old,
                Value::List(items) => *items.get_mut(i).ok_or(MISMATCH)? = old,
                _ => return Err(MISMATCH),
            },
            Undo::Written(loc, Written::Appended) => match locate(root, &loc)? {
                Value::Dict(items) => drop(items.pop().ok_or(MISMATCH)?),
                _ => return Err(MISMATCH),
            },
            Undo::Pushed(loc) => match locate(root, &loc)? {
                Value::List(items) => drop(items.pop().ok_or(MISMATCH)?),
                _ => return Err(MISMATCH),
            },
            Undo::Removed(loc, Removed::Entry(i, key, value)) => match locate(root, &loc)? {
                Value::Dict(items) if i <= items.len() => items.insert(i, (key, value)),
                _ => return Err(MISMATCH),
            },
            Undo::Removed(loc, Removed::Item(i, value)) => match locate(root, &loc)? {
                Value::List(items) if i <= items.len() => items.insert(i, value),
                _ => return Err(MISMATCH),
            },
            Undo::Inserted(loc, i) => match locate(root, &loc)? {
                Value::List(items) if i < items.len() => drop(items.remove(i)),
                _ => return Err(MISMATCH),
            },
            Undo::Replaced(loc, old) => match locate(root, &loc)? {
                Value::List(items) => *items = old,
                _ => return Err(MISMATCH),
            },
        }
        Ok(())
    }
}

fn is_root_elem(e: &Element) -> bool {
    e.1 == Action::GetAttr && e.0.as_str() == Some("root")
}

fn element_key(e: &Element) -> &Value {
    &e.0
}

fn elements_eq(a: &[Element], b: &[Element]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.1 == y.1 && py_eq(&x.0, &y.0))
}

fn tuple_to_list(v: &Value) -> Value {
    match v {
        Value::Tuple(items) => Value::List(items.clone()),
        other => other.clone(),
    }
}

impl Patcher<'_> {
    fn log(&mut self, msg: String) {
        self.log.push(msg);
    }

    /// The object at a location; `[]` is the Delta object itself, which only
    /// has `.root`.
    fn get(&self, loc: &[Element]) -> PyResult<Cow<'_, Value>> {
        let Some((first, rest)) = loc.split_first() else {
            return Err(PyErr::Type("the Delta object itself is not data"));
        };
        if !is_root_elem(first) {
            return Err(PyErr::Attribute);
        }
        let mut cur: Cow<'_, Value> = Cow::Borrowed(&self.root);
        for (key, action) in rest {
            if *action == Action::GetAttr {
                return Err(PyErr::Attribute);
            }
            cur = match cur {
                Cow::Borrowed(v) => match v {
                    Value::Dict(_) | Value::List(_) | Value::Tuple(_) => Cow::Borrowed(get_ref(v, key)?),
                    other => Cow::Owned(pyops::get_item(other, key)?),
                },
                Cow::Owned(v) => Cow::Owned(pyops::get_item(&v, key)?),
            };
        }
        Ok(cur)
    }

    /// `obj[elem]` (or `getattr`) where obj is at `obj_loc`, borrowed when
    /// it lives in the tree: most reads only test that it exists.
    fn peek(&self, obj_loc: &[Element], elem: &Element) -> PyResult<Cow<'_, Value>> {
        if obj_loc.is_empty() {
            return if is_root_elem(elem) {
                Ok(Cow::Borrowed(&self.root))
            } else {
                Err(PyErr::Attribute)
            };
        }
        if elem.1 == Action::GetAttr {
            return Err(PyErr::Attribute);
        }
        match self.get(obj_loc)? {
            Cow::Borrowed(obj @ (Value::Dict(_) | Value::List(_) | Value::Tuple(_))) => {
                get_ref(obj, &elem.0).map(Cow::Borrowed)
            }
            obj => pyops::get_item(&obj, &elem.0).map(Cow::Owned),
        }
    }

    fn exists(&self, obj_loc: &[Element], elem: &Element) -> bool {
        self.peek(obj_loc, elem).is_ok()
    }

    /// `_get_elements_and_details`.
    fn details(&mut self, elements: Vec<Element>, path: &str) -> Option<Details> {
        let n = elements.len();
        if n > 1 {
            // An empty location is the Delta object, which always exists.
            if let Err(e) = if n > 2 {
                self.get(&elements[..n - 2]).map(|_| ())
            } else {
                Ok(())
            } {
                self.log(format!("Unable to get the item at {path}: {e}"));
                return None;
            }
            if !self.exists(&elements[..n - 2], &elements[n - 2]) {
                self.log(format!("Unable to get the item at {path}"));
                return None;
            }
        }
        Some(Details { elements })
    }

    fn details_for(&mut self, path: &str) -> Option<Details> {
        let elements = path::parse(path, self.dialect);
        self.details(elements, path)
    }

    /// `_simple_set_elem_value`. False when the write failed (logged).
    fn simple_set(&mut self, obj_loc: &[Element], elem: &Element, value: Value, path: &str) -> bool {
        if obj_loc.is_empty() {
            if is_root_elem(elem) {
                let old = std::mem::replace(&mut self.root, value);
                self.undo.push(Undo::Root(old));
                return true;
            }
            self.log(format!("Failed to set {path} due to AttributeError"));
            return false;
        }
        if elem.1 == Action::GetAttr {
            self.log(format!("Failed to set {path} due to AttributeError"));
            return false;
        }
        let result = match locate(&mut self.root, obj_loc) {
            // An index one past the end appends, as deepdiff's fallback does.
            Ok(Value::List(items)) if pyops::seq_index(items.len(), &elem.0) == Err(PyErr::Index) => {
                if py_eq(&elem.0, &Value::Int(items.len() as i64)) {
                    items.push(value);
                    self.undo.push(Undo::Pushed(obj_loc.to_vec()));
                    Ok(())
                } else {
                    self.log.push(format!(
                        "Key or index of {} is not found for {path} for setting operation.",
                        super::repr::py_repr(&elem.0)
                    ));
                    return false;
                }
            }
            Ok(obj) => pyops::set_item(obj, &elem.0, value).map(|w| self.undo.push(Undo::Written(obj_loc.to_vec(), w))),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                self.log(format!("Failed to set {path} due to {e}"));
                false
            }
        }
    }

    /// Records a container turned from tuple into list, to be turned back.
    fn register_post(&mut self, loc: &[Element]) -> Result<(), Abort> {
        if self.post.iter().any(|p| elements_eq(p, loc)) {
            return Ok(());
        }
        if self.in_post {
            // deepdiff 5 keeps these in an OrderedDict, whose iterator has
            // already finished when the last entry adds one; a dict raises.
            let on_last_entry = self.post_cursor + 1 == self.post_end;
            if self.dialect == Dialect::V8 || !on_last_entry {
                return abort("RuntimeError: dictionary changed size during iteration");
            }
        }
        self.post.push(loc.to_vec());
        Ok(())
    }

    /// `_set_new_value`.
    fn set_new_value(&mut self, d: &Details, new_value: Value, path: &str) -> Result<(), Abort> {
        let n = d.n();
        if n >= 2 {
            let obj_is_tuple = matches!(self.get(d.obj_loc()).as_deref(), Ok(Value::Tuple(_)));
            if obj_is_tuple {
                self.register_post(d.obj_loc())?;
                let list = match self.get(d.obj_loc()) {
                    Ok(v) => tuple_to_list(&v),
                    Err(_) => return Ok(()),
                };
                let parent_loc = &d.elements[..n - 2];
                let parent_elem = &d.elements[n - 2];
                if !self.simple_set(parent_loc, parent_elem, list, path) {
                    // The list is now detached from the tree; writing into it
                    // changes nothing anyone can see.
                    return Ok(());
                }
            }
        }
        self.simple_set(d.obj_loc(), d.elem(), new_value, path);
        Ok(())
    }

    /// A change of an existing dict entry or list item, in one walk: the
    /// common case, for which every check of the general path passes (the
    /// container is reachable, is not a tuple deepdiff would swap for a
    /// list, and holds the key), so the write is the one it would make.
    /// When anything differs the path's elements come back, the tree
    /// untouched, and the general path takes the change with Python's
    /// messages.
    fn replace_existing(
        &mut self,
        elements: Vec<Element>,
        change: &mut Change,
        is_type_change: bool,
    ) -> Result<(), Vec<Element>> {
        let Some((index, old)) = self.replace_in_tree(&elements, change, is_type_change) else {
            return Err(elements);
        };
        // The path's own elements, its last one dropped, locate the write
        // for the undo log: no copy of them.
        let mut obj_loc = elements;
        obj_loc.pop();
        self.undo.push(Undo::Written(obj_loc, Written::Replaced(index, old)));
        Ok(())
    }

    /// The write of `replace_existing`: the index written and the value it
    /// held. None, with the tree untouched, when the fast path does not apply.
    fn replace_in_tree(
        &mut self,
        elements: &[Element],
        change: &mut Change,
        is_type_change: bool,
    ) -> Option<(usize, Value)> {
        let (elem, obj_loc) = elements.split_last()?;
        if obj_loc.is_empty() || elem.1 != Action::Get {
            return None;
        }
        let obj = locate(&mut self.root, obj_loc).ok()?;
        let (index, slot) = match obj {
            Value::Dict(items) => {
                let i = pyops::dict_find(items, &elem.0).ok()??;
                (i, &mut items[i].1)
            }
            Value::List(items) => {
                let i = pyops::seq_index(items.len(), &elem.0).ok()?;
                (i, &mut items[i])
            }
            _ => return None,
        };
        let new_value = match change.new_value.take() {
            Some(v) => v,
            None if is_type_change => pyops::convert(&change.new_type, slot).ok()?,
            None => return None,
        };
        Some((index, std::mem::replace(slot, new_value)))
    }

    /// Steps 1 and 3: values_changed and type_changes.
    fn values_or_types(&mut self, changes: &mut [(Path, Change)], is_type_change: bool) -> Result<(), Abort> {
        for (path, change) in changes {
            let elements = match self.replace_existing(path::parse(path, self.dialect), change, is_type_change) {
                Ok(()) => continue,
                Err(elements) => elements,
            };
            let Some(d) = self.details(elements, path) else {
                continue;
            };
            let new_value = match self.peek(d.obj_loc(), d.elem()) {
                Err(_) => Err(format!("Unable to get the item at {path}")),
                // Paths are unique: each new value is used once, and moved.
                Ok(current) => match (change.new_value.take(), is_type_change) {
                    (Some(v), _) => Ok(v),
                    (None, true) => pyops::convert(&change.new_type, &current)
                        .map_err(|e| format!("Unable to do the type change for {path} due to {e}")),
                    (None, false) => return abort(format!("KeyError: 'new_value' in values_changed[{path}]")),
                },
            };
            match new_value {
                Ok(v) => self.set_new_value(&d, v, path)?,
                Err(line) => self.log(line),
            }
        }
        Ok(())
    }

    /// Step 4: `_iterable_opcodes` (deepdiff 8).
    fn opcodes(&mut self, items: &[(Path, Vec<Opcode>)]) -> Result<(), Abort> {
        for (path, opcodes) in items {
            let Some(d) = self.details_for(path) else { continue };
            let n = d.n();
            let obj = match self.get(&d.elements) {
                Ok(v) => v,
                Err(e) => return abort(format!("{e} while reading {path}")),
            };
            let mut transformed: Vec<Value> = Vec::new();
            for op in opcodes {
                match op.tag.as_str() {
                    "replace" | "insert" => match &op.new_values {
                        Value::List(v) | Value::Tuple(v) => transformed.extend(v.iter().cloned()),
                        Value::Dict(v) => transformed.extend(v.iter().map(|(k, _)| k.clone())),
                        Value::Str(_) | Value::Bytes(_) => {
                            transformed.extend(pyops::iterate(&op.new_values).unwrap_or_default())
                        }
                        _ => return abort("TypeError: opcode new_values is not iterable"),
                    },
                    "equal" => match &*obj {
                        Value::List(v) | Value::Tuple(v) => {
                            let len = v.len() as i64;
                            let clamp = |i: i64| -> usize {
                                let j = if i < 0 { (i + len).max(0) } else { i.min(len) };
                                j as usize
                            };
                            let (a, b) = (clamp(op.t1_from), clamp(op.t1_to));
                            if a < b {
                                transformed.extend(v[a..b].iter().cloned());
                            }
                        }
                        _ => return abort("TypeError: cannot slice this object"),
                    },
                    _ => {}
                }
            }
            if matches!(*obj, Value::Tuple(_)) {
                let obj = obj.into_owned();
                // deepdiff writes the unchanged tuple over the list's parent.
                let (parent_loc, parent_elem) = if n >= 2 {
                    (d.elements[..n - 2].to_vec(), d.elements[n - 2].clone())
                } else {
                    (Vec::new(), d.elements[0].clone())
                };
                self.simple_set(&parent_loc, &parent_elem, obj, path);
            } else {
                match locate(&mut self.root, &d.elements) {
                    Ok(Value::List(items)) => {
                        let old = std::mem::replace(items, transformed);
                        self.undo.push(Undo::Replaced(d.elements.clone(), old));
                    }
                    _ => return abort(format!("TypeError: object does not support slice assignment at {path}")),
                }
            }
        }
        Ok(())
    }

    /// The order deepdiff visits `items` in (sorted by parsed path), as
    /// indices, with each path parsed once.
    fn sort_paths<T>(&self, items: &[(Path, T)], reverse: bool) -> Result<Vec<(usize, Vec<Element>)>, Abort> {
        let mut parsed: Vec<Vec<Element>> = items.iter().map(|(p, _)| path::parse(p, self.dialect)).collect();
        let order: Vec<usize> = (0..items.len()).collect();
        let sorted = match py_sorted(order.clone(), reverse, |a, b| {
            pyops::seq_lt_by(&parsed[*a], &parsed[*b], element_key)
        }) {
            Ok(sorted) => sorted,
            Err(e) if self.dialect == Dialect::V5 => return abort(format!("TypeError while sorting paths: {e}")),
            // deepdiff 8 retries with a comparison function that itself
            // raises whenever the first elements of an incomparable pair
            // share a type.
            Err(_) => py_sorted(order, reverse, |a, b| {
                Ok(sort_comparison(&parsed[*a][1..], &parsed[*b][1..])? < 0)
            })
            .map_err(|_| Abort("TypeError: argument of type 'NoneType' is not iterable".into()))?,
        };
        Ok(sorted
            .into_iter()
            .map(|i| (i, std::mem::take(&mut parsed[i])))
            .collect())
    }

    /// Steps 5 and 9: `_do_item_removed`.
    fn items_removed(&mut self, items: &[(Path, Value)]) -> Result<(), Abort> {
        for (i, elements) in self.sort_paths(items, true)? {
            let (path, expected) = &items[i];
            let Some(d) = self.details(elements, path) else {
                continue;
            };
            let mut elem = d.elem().clone();
            match self.dialect {
                Dialect::V8 => {
                    let (look, mut found, closest) = {
                        let obj = self.get(d.obj_loc());
                        let current = match obj.as_deref() {
                            Ok(o) => pyops::get_item(o, &elem.0).ok(),
                            Err(_) => None,
                        };
                        let look = current.as_ref().is_none_or(|c| !py_eq(c, expected));
                        let closest = match obj.as_deref() {
                            Ok(list @ Value::List(_)) if look => Some(closest_index(list, &elem.0, expected)?),
                            _ => None,
                        };
                        (look, current.is_some(), closest)
                    };
                    if let (true, Some(closest)) = (look, closest) {
                        match closest {
                            Some(i) => {
                                elem.0 = Value::Int(i as i64);
                                found = true;
                            }
                            None => continue,
                        }
                    }
                    // deepdiff 8 tests `elem is None`, which a None key also meets.
                    if !found || elem.0 == Value::None {
                        continue;
                    }
                }
                Dialect::V5 => {
                    if !self.exists(d.obj_loc(), &elem) {
                        self.log(format!("Unable to get the item at {path}"));
                        continue;
                    }
                }
            }
            self.del_elem(&d, &elem, path)?;
        }
        Ok(())
    }

    /// `_del_elem`.
    fn del_elem(&mut self, d: &Details, elem: &Element, path: &str) -> Result<(), Abort> {
        let n = d.n();
        let tuple_items = match self.get(d.obj_loc()).as_deref() {
            Ok(Value::Tuple(items)) => Some(items.clone()),
            Ok(_) => None,
            Err(_) => return Ok(()),
        };
        let mut target = match tuple_items {
            Some(items) => {
                self.register_post(d.obj_loc())?;
                Some(Value::List(items))
            }
            None => None,
        };
        if elem.1 == Action::GetAttr {
            self.log(format!("Failed to set {path} due to AttributeError"));
            return Ok(());
        }
        let result = match target.as_mut() {
            // A detached copy: its writes need no undoing.
            Some(list) => pyops::del_item(list, &elem.0).map(drop),
            None => match locate(&mut self.root, d.obj_loc()) {
                Ok(o) => pyops::del_item(o, &elem.0).map(|r| self.undo.push(Undo::Removed(d.obj_loc().to_vec(), r))),
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(()) => {}
            Err(PyErr::Type(m)) => return abort(format!("TypeError: {m} at {path}")),
            Err(e) => self.log(format!("Failed to set {path} due to {e}")),
        }
        if let Some(list) = target
            && n >= 2
        {
            let parent_loc = d.elements[..n - 2].to_vec();
            let parent_elem = d.elements[n - 2].clone();
            self.simple_set(&parent_loc, &parent_elem, list, path);
        }
        Ok(())
    }

    /// Steps 6 and 8: `_do_item_added`.
    fn items_added(&mut self, items: &mut [(Path, Value)], sort: bool, insert: bool) -> Result<(), Abort> {
        let ordered = if sort {
            self.sort_paths(items, false)?
        } else {
            let parse = |(i, (p, _)): (usize, &(Path, Value))| (i, path::parse(p, self.dialect));
            items.iter().enumerate().map(parse).collect()
        };
        for (i, elements) in ordered {
            let (path, value) = &mut items[i];
            let (path, value) = (&*path, std::mem::replace(value, Value::None));
            let Some(d) = self.details(elements, path) else {
                continue;
            };
            if insert {
                let len = match self.get(d.obj_loc()).as_deref() {
                    Ok(obj) => pyops::py_len(obj).map_err(|e| Abort(format!("{e} at {path}")))?,
                    Err(e) => return abort(format!("{e}")),
                };
                let below = pyops::py_lt(&d.elem().0, &Value::Int(len as i64)).map_err(|e| Abort(format!("{e}")))?;
                if below {
                    match locate(&mut self.root, d.obj_loc()) {
                        Ok(Value::List(list)) => {
                            let i = match &d.elem().0 {
                                Value::Int(i) => *i,
                                Value::Bool(b) => i64::from(*b),
                                _ => return abort("TypeError: list indices must be integers"),
                            };
                            let l = list.len() as i64;
                            let at = if i < 0 { (i + l).max(0) } else { i.min(l) };
                            list.insert(at as usize, Value::None);
                            self.undo.push(Undo::Inserted(d.obj_loc().to_vec(), at as usize));
                        }
                        _ => return abort(format!("AttributeError: object has no attribute 'insert' at {path}")),
                    }
                }
            }
            self.set_new_value(&d, value, path)?;
        }
        Ok(())
    }

    /// Step 7: `_do_ignore_order`.
    fn ignore_order(&mut self, added: &IndexedItems, removed: &IndexedItems) -> Result<(), Abort> {
        let mut paths: Vec<&Path> = Vec::new();
        for (p, _) in added.iter().chain(removed) {
            if !paths.contains(&p) {
                paths.push(p);
            }
        }
        for path in paths {
            let probe = format!("{path}[0]");
            let Some(d) = self.details_for(&probe) else { continue };
            let n = d.n();
            let container_loc = d.obj_loc().to_vec();
            let obj = match self.get(&container_loc) {
                Ok(v) => v.into_owned(),
                Err(_) => continue,
            };
            let mut fixed: Vec<(Value, Value)> = added
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let mut remove: Vec<(Value, Value)> = removed
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let fixed_values = AnySet::new(fixed.iter().map(|(_, v)| v), self.dialect)?;
            // The generator of old items only asks len() once it runs.
            let mut old_len: Option<usize> = None;
            let mut old_index = 0usize;
            let mut there_are_old = pyops::truthy(&obj);
            let mut new_obj: Vec<Value> = Vec::new();
            while there_are_old || !fixed.is_empty() {
                let idx = Value::Int(new_obj.len() as i64);
                if let Some(pos) = fixed.iter().position(|(k, _)| py_eq(k, &idx)) {
                    new_obj.push(fixed.remove(pos).1);
                } else if there_are_old {
                    // The generator of old items that survive.
                    let mut produced = None;
                    let old_len = match old_len {
                        Some(n) => n,
                        None => *old_len.insert(pyops::py_len(&obj).map_err(|e| Abort(format!("{e}")))?),
                    };
                    while old_index < old_len {
                        let i = old_index;
                        old_index += 1;
                        let current =
                            pyops::get_item(&obj, &Value::Int(i as i64)).map_err(|e| Abort(format!("{e}")))?;
                        if fixed_values.contains(&current, self.dialect)? {
                            continue;
                        }
                        if let Some(pos) = remove.iter().position(|(k, _)| py_eq(k, &Value::Int(i as i64))) {
                            let expected = remove.remove(pos).1;
                            if py_eq(&current, &expected) {
                                continue;
                            }
                            self.log(format!("Failed to remove index[{i}] on {path}."));
                        }
                        produced = Some(current);
                        break;
                    }
                    match produced {
                        Some(v) => new_obj.push(v),
                        None => there_are_old = false,
                    }
                } else {
                    self.log(format!("Delta added to an incompatible object at {path}."));
                    new_obj.push(fixed.remove(0).1);
                }
            }
            let new_value = if matches!(obj, Value::Tuple(_)) {
                Value::Tuple(new_obj)
            } else {
                Value::List(new_obj)
            };
            let parent_loc = d.elements[..n - 2].to_vec();
            let parent_elem = d.elements[n - 2].clone();
            self.simple_set(&parent_loc, &parent_elem, new_value, path);
        }
        Ok(())
    }

    /// Step 10: tuples that were written through a list become tuples again.
    fn post_process(&mut self) -> Result<(), Abort> {
        self.in_post = true;
        self.post_end = self.post.len();
        let mut i = 0;
        while i < self.post_end {
            let loc = self.post[i].clone();
            self.post_cursor = i;
            i += 1;
            let path = format!(
                "{:?}",
                loc.iter().map(|(e, _)| super::repr::py_repr(e)).collect::<Vec<_>>()
            );
            let Some(d) = self.details(loc, &path) else { continue };
            let new_value = match self.peek(d.obj_loc(), d.elem()) {
                Err(_) => Err(format!("Unable to get the item at {path}")),
                Ok(current) => pyops::convert(&Value::Global(Global::Builtin(BuiltinType::Tuple)), &current)
                    .map_err(|e| format!("Unable to do the type change for {path} due to {e}")),
            };
            match new_value {
                Ok(v) => self.set_new_value(&d, v, &path)?,
                Err(line) => self.log(line),
            }
        }
        Ok(())
    }
}

fn get_ref<'v>(obj: &'v Value, key: &Value) -> PyResult<&'v Value> {
    match obj {
        Value::Dict(items) => match pyops::dict_find(items, key)? {
            Some(i) => Ok(&items[i].1),
            None => Err(PyErr::Key),
        },
        Value::List(items) | Value::Tuple(items) => Ok(&items[pyops::seq_index(items.len(), key)?]),
        _ => Err(PyErr::Type("object is not subscriptable")),
    }
}

/// `_find_closest_iterable_element_for_index`.
fn closest_index(obj: &Value, elem: &Value, expected: &Value) -> Result<Option<usize>, Abort> {
    let Value::List(items) = obj else { return Ok(None) };
    let target = match elem {
        Value::Int(i) => *i as f64,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Float(f) => *f,
        _ => return abort("TypeError: unsupported operand type(s) for -"),
    };
    let mut closest = None;
    let mut best = f64::INFINITY;
    for (i, v) in items.iter().enumerate() {
        let dist = (i as f64 - target).abs();
        if dist > best {
            break;
        }
        if dist < best && py_eq(v, expected) {
            closest = Some(i);
            best = dist;
        }
    }
    Ok(closest)
}

/// deepdiff 8's `_sort_comparison`, on paths without their root.
fn sort_comparison(left: &[Element], right: &[Element]) -> Result<i32, PyErr> {
    match pyops::seq_lt_by(left, right, element_key) {
        Ok(true) => return Ok(-1),
        Ok(false) => match pyops::seq_lt_by(right, left, element_key) {
            Ok(true) => return Ok(1),
            Ok(false) => return Ok(0),
            Err(_) => {}
        },
        Err(_) => {}
    }
    let n = left.len().min(right.len());
    for ((l, _), (r, _)) in left[..n].iter().zip(&right[..n]) {
        if std::mem::discriminant(l) == std::mem::discriminant(r)
            || (matches!(l, Value::Int(_) | Value::BigInt(_)) && matches!(r, Value::Int(_) | Value::BigInt(_)))
        {
            return Err(PyErr::Type("argument of type 'NoneType' is not iterable"));
        }
        let (ls, rs) = (Value::str(&super::repr::py_str(l)), Value::str(&super::repr::py_str(r)));
        if pyops::py_lt(&ls, &rs)? {
            return Ok(-1);
        }
        if pyops::py_lt(&rs, &ls)? {
            return Ok(1);
        }
    }
    Ok(0)
}

/// deepdiff's AnySet: hashable members by hash/eq, the others by DeepHash.
struct AnySet {
    hashable: Vec<Value>,
    deep: Vec<String>,
}

impl AnySet {
    fn new<'a>(items: impl Iterator<Item = &'a Value>, dialect: Dialect) -> Result<Self, Abort> {
        let mut set = AnySet {
            hashable: Vec::new(),
            deep: Vec::new(),
        };
        for v in items {
            if pyops::is_hashable(v) {
                if !set.hashable.iter().any(|h| py_eq(h, v)) {
                    set.hashable.push(v.clone());
                }
            } else {
                set.deep.push(deep_hash(v, dialect)?);
            }
        }
        Ok(set)
    }

    fn contains(&self, v: &Value, dialect: Dialect) -> Result<bool, Abort> {
        if pyops::is_hashable(v) {
            Ok(self.hashable.iter().any(|h| py_eq(h, v)))
        } else {
            let key = deep_hash(v, dialect)?;
            Ok(self.deep.contains(&key))
        }
    }
}

fn has_non_utf8_bytes(v: &Value) -> bool {
    match v {
        Value::Bytes(b) => std::str::from_utf8(b).is_err(),
        Value::List(items) | Value::Tuple(items) => items.iter().any(has_non_utf8_bytes),
        Value::Dict(items) => items
            .iter()
            .any(|(k, x)| has_non_utf8_bytes(k) || has_non_utf8_bytes(x)),
        _ => false,
    }
}

/// DeepHash decodes bytes as UTF-8 (both versions) and raises on failure.
fn deep_hash(v: &Value, _dialect: Dialect) -> Result<String, Abort> {
    if has_non_utf8_bytes(v) {
        return abort("UnicodeDecodeError in DeepHash");
    }
    Ok(pyops::deep_hash_key(v))
}

/// One values_changed / type_changes entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub new_value: Option<Value>,
    pub new_type: Value,
}

/// Applies a parsed delta to `root` itself, all or nothing: when Python
/// would abort, the writes made so far are taken back from an undo log,
/// so nothing is copied up front.
pub fn apply_in_place(root: &mut Value, mut delta: Delta, log: &mut Vec<String>) -> Result<(), Abort> {
    let mut p = Patcher {
        root: std::mem::replace(root, Value::None),
        dialect: delta.dialect,
        post: Vec::new(),
        in_post: false,
        post_end: 0,
        post_cursor: 0,
        log,
        undo: Vec::new(),
    };
    let result = p.run(&mut delta);
    if result.is_err() {
        while let Some(undo) = p.undo.pop() {
            if let Err(e) = undo.revert(&mut p.root) {
                // Each step restores the tree the next one expects: a
                // mismatch is a bug here, never the client's doing.
                debug_assert!(false, "undo failed: {e}");
                tracing::error!(error = %e, "could not take back the writes of an aborted delta");
                break;
            }
        }
    }
    *root = p.root;
    result
}

impl Patcher<'_> {
    /// deepdiff's `_do_*` steps in its order.
    fn run(&mut self, delta: &mut Delta) -> Result<(), Abort> {
        self.values_or_types(&mut delta.values_changed, false)?;
        self.values_or_types(&mut delta.type_changes, true)?;
        if self.dialect == Dialect::V8 {
            self.opcodes(&delta.iterable_opcodes)?;
        }
        self.items_removed(&delta.iterable_item_removed)?;
        self.items_added(&mut delta.iterable_item_added, true, true)?;
        self.ignore_order(&delta.items_added_at_indexes, &delta.items_removed_at_indexes)?;
        self.items_added(&mut delta.dictionary_item_added, false, false)?;
        self.items_removed(&delta.dictionary_item_removed)?;
        self.post_process()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pickle::dict;

    fn change(value: Value) -> Change {
        Change {
            new_value: Some(value),
            new_type: Value::None,
        }
    }

    /// Edits in three steps, the last of which raises in Python (an
    /// insert into an int): the first two wrote into the node, removed a
    /// top-level entry and changed a nested one.
    fn delta(dialect: Dialect, with_failing_step: bool) -> Delta {
        Delta {
            dialect,
            values_changed: vec![("root['c']['k']".into(), change(Value::Int(2)))],
            iterable_item_removed: vec![
                ("root['b']".into(), Value::str("x")),
                ("root['a'][0]".into(), Value::Int(1)),
            ],
            iterable_item_added: if with_failing_step {
                vec![("root['d'][0]".into(), Value::Int(7))]
            } else {
                Vec::new()
            },
            ..Default::default()
        }
    }

    fn node() -> Value {
        dict([
            ("a", Value::List(vec![Value::Int(1), Value::Int(2)])),
            ("b", Value::str("x")),
            ("untouched", Value::Int(0)),
            ("c", dict([("k", Value::Int(1))])),
            ("d", Value::Int(5)),
            ("last", Value::Int(0)),
        ])
    }

    #[test]
    fn an_aborted_patch_leaves_the_node_as_it_was_in_order() {
        for dialect in [Dialect::V5, Dialect::V8] {
            let mut value = node();
            let result = apply_in_place(&mut value, delta(dialect, true), &mut Vec::new());
            assert!(result.is_err(), "{dialect:?}: the insert into an int must abort");
            assert_eq!(value, node(), "{dialect:?}");

            // The same edits without the failing one do apply.
            apply_in_place(&mut value, delta(dialect, false), &mut Vec::new()).expect("applies");
            let want = dict([
                ("a", Value::List(vec![Value::Int(2)])),
                ("untouched", Value::Int(0)),
                ("c", dict([("k", Value::Int(2))])),
                ("d", Value::Int(5)),
                ("last", Value::Int(0)),
            ]);
            assert_eq!(value, want, "{dialect:?}");
        }
    }

    #[test]
    fn a_list_node_is_restored_too() {
        let list = || Value::List(vec![Value::Int(1), Value::Int(5)]);
        let delta = Delta {
            values_changed: vec![("root[0]".into(), change(Value::Int(9)))],
            iterable_item_added: vec![("root[1][0]".into(), Value::Int(7))],
            ..Default::default()
        };
        let mut value = list();
        assert!(apply_in_place(&mut value, delta, &mut Vec::new()).is_err());
        assert_eq!(value, list());
    }
}
