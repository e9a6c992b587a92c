//! The calls a pickle makes (REDUCE, INST, OBJ, NEWOBJ, BUILD): tensor rebuilding, plain
//! containers, and opaque objects for every other class the policy lets through.

use std::cell::RefCell;
use std::rc::Rc;

use super::Machine;
use crate::pickle::policy::{BUILTIN_DATA_TYPES, CALLABLES, canonical_module, is_dict_class};
use crate::pickle::{
    MAX_DIMS, PResult, PickleError, StorageDType, StorageRef, TensorRef, Value, malformed,
};

impl Machine<'_> {
    /// `callable(*args)` for the callables of [`CALLABLES`]; any other call refuses the file.
    /// `nested` is set inside `_rebuild_from_type_v2`, which may not nest itself (a list holding
    /// itself would otherwise recurse without end).
    pub(super) fn call(&mut self, callable: &Value, args: &Value, nested: bool) -> PResult<Value> {
        let Value::Global(module, name) = callable else {
            return Err(PickleError::Forbidden {
                global: "an object the pickle built itself".into(),
                action: "calls",
            });
        };
        let forbidden = || PickleError::Forbidden {
            global: format!("{module}.{name}"),
            action: "calls",
        };
        let qualified = (canonical_module(module), &**name);
        if !CALLABLES.contains(&qualified) {
            return Err(forbidden());
        }
        let args = self.items(args)?.unwrap_or_default();
        match qualified {
            ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2") => {
                self.rebuild_tensor(&args, None)
            }
            ("torch._utils", "_rebuild_tensor_v3") => {
                let dtype = match args.get(6) {
                    Some(Value::Global(_, n)) => StorageDType::from_name(n),
                    _ => None,
                };
                self.rebuild_tensor(&args, dtype)
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state")
            | ("torch.nn.parameter", "Parameter") => match args.into_iter().next() {
                Some(t @ Value::Tensor(_)) => Ok(t),
                _ => Ok(Value::Object("parameter".into())),
            },
            ("torch._tensor", "_rebuild_from_type_v2") => {
                // (func, new_type, args, state): the tensor is func(*args), its Python subclass
                // and attributes do not matter here.
                if nested {
                    return malformed("nested _rebuild_from_type_v2");
                }
                match (args.first(), args.get(2)) {
                    (Some(func), Some(inner)) => self.call(func, inner, true),
                    _ => Ok(Value::Object("tensor subclass".into())),
                }
            }
            (m, n) if is_dict_class(m, n) => {
                // OrderedDict() or OrderedDict([(k, v), …]).
                let mut out = Vec::new();
                if let Some(first) = args.first()
                    && let Some(pairs) = self.items(first)?
                {
                    for pair in pairs {
                        if let Some(kv) = self.items(&pair)?
                            && let [k, v] = kv.as_slice()
                        {
                            out.push((k.clone(), v.clone()));
                        }
                    }
                }
                Ok(Value::Dict(Rc::new(RefCell::new(out))))
            }
            ("torch", "Size") => {
                let dims = match args.first() {
                    Some(v) => self.items(v)?.unwrap_or_default(),
                    None => Vec::new(),
                };
                Ok(Value::Tuple(dims.into()))
            }
            ("builtins", "set" | "frozenset") => {
                let items = match args.first() {
                    Some(v) => self.items(v)?.unwrap_or_default(),
                    None => Vec::new(),
                };
                Ok(Value::List(Rc::new(RefCell::new(items))))
            }
            ("copyreg", "_reconstructor") => match args.as_slice() {
                // `base.__new__(cls, state)`, then `base.__init__(obj, state)` unless the base
                // is `object`: only built-in data types may be the base, or it is a call.
                [cls, Value::Global(bm, bn), ..]
                    if canonical_module(bm) == "builtins"
                        && BUILTIN_DATA_TYPES.contains(&&**bn) =>
                {
                    instantiate(cls)
                }
                [_, Value::Global(bm, bn), ..] => Err(PickleError::Forbidden {
                    global: format!("{bm}.{bn}"),
                    action: "calls",
                }),
                _ => malformed("copyreg._reconstructor needs a class and a base class"),
            },
            (m, n) => Ok(Value::Object(format!("{m}.{n}").into())),
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, …)`.
    pub(super) fn rebuild_tensor(
        &mut self,
        args: &[Value],
        dtype: Option<StorageDType>,
    ) -> PResult<Value> {
        let Some(Value::Storage(storage)) = args.first() else {
            // A tensor not backed by a plain storage (meta, sparse, …): not loadable, not fatal.
            return Ok(Value::Object("unsupported tensor".into()));
        };
        let offset = args.get(1).and_then(Value::as_usize);
        let size = self.usize_items(args.get(2))?;
        let stride = self.usize_items(args.get(3))?;
        let (Some(offset), Some(size), Some(stride)) = (offset, size, stride) else {
            return malformed(format!(
                "the tensor over storage data/{} has a negative or non-integer offset, size or \
                 stride",
                storage.key
            ));
        };
        if size.len() != stride.len() {
            return malformed("tensor size and stride differ in length");
        }
        if size.len() > MAX_DIMS {
            return malformed(format!(
                "a tensor has {} dimensions (at most {MAX_DIMS} are accepted)",
                size.len()
            ));
        }
        let Some(dtype) = dtype.or(storage.dtype) else {
            return Ok(Value::Object("untyped tensor".into()));
        };
        Ok(Value::Tensor(Rc::new(TensorRef {
            storage: storage.clone(),
            dtype,
            offset,
            size,
            stride,
        })))
    }

    /// `persistent_load(('storage', StorageClass, key, location, numel))`.
    pub(super) fn persistent_load(&mut self, pid: &Value) -> PResult<Value> {
        let Some(items) = self.items(pid)? else {
            return Ok(Value::Object("persistent id".into()));
        };
        match items.as_slice() {
            [
                Value::Str(kind),
                class,
                Value::Str(key),
                _location,
                numel,
                ..,
            ] if &**kind == "storage" => {
                let dtype = match class {
                    Value::Global(_, n) => StorageDType::from_name(n),
                    _ => None,
                };
                let numel = numel.as_usize().ok_or(PickleError::Malformed(
                    "storage size is not a number".into(),
                ))?;
                Ok(Value::Storage(StorageRef {
                    key: key.to_string(),
                    dtype,
                    numel,
                }))
            }
            _ => Ok(Value::Object("persistent id".into())),
        }
    }
}

/// NEWOBJ: `cls.__new__(cls, *args)`. Python runs no `__init__` here, so any class the reference
/// check let through may be instantiated; dict classes become dicts, others opaque objects.
pub(super) fn instantiate(cls: &Value) -> PResult<Value> {
    match cls {
        Value::Global(m, n) if is_dict_class(canonical_module(m), n) => {
            Ok(Value::Dict(Rc::default()))
        }
        Value::Global(m, n) => Ok(Value::Object(format!("{m}.{n}").into())),
        _ => malformed("NEWOBJ of something that is not a class"),
    }
}

/// BUILD: attaches state; we do not need the state of the objects we keep opaque. On a global it
/// would set attributes of a class or module (how a pickle rewires code): refused.
pub(super) fn build(target: &mut Value, _state: Value) -> PResult<()> {
    if let Value::Global(m, n) = target {
        return Err(PickleError::Forbidden {
            global: format!("{m}.{n}"),
            action: "sets attributes of",
        });
    }
    Ok(())
}
