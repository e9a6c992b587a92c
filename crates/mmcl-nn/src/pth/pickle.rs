//! A pickle virtual machine for the objects `torch.save` writes.
//!
//! It executes the opcodes of protocols 0–5 that occur in PyTorch files and builds plain values:
//! numbers, strings, tuples, lists, dicts, tensor descriptions (from `_rebuild_tensor_v2` and
//! friends over persistent storages), and opaque objects for every other class (optimizer
//! states, hyper-parameter containers, OmegaConf configs, …), which the caller ignores. It never
//! imports or runs anything: a global is only a name.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

/// Why a pickle could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PickleError {
    /// The stream ended inside an opcode or before STOP.
    Truncated,
    /// An opcode byte we do not know (or that protocol 5 out-of-band buffers need).
    UnknownOpcode(u8, usize),
    /// The stream is malformed (stack underflow, missing mark, bad memo reference, …).
    Malformed(String),
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PickleError::Truncated => write!(f, "the pickled data is truncated"),
            PickleError::UnknownOpcode(op, pos) => {
                write!(f, "unsupported pickle opcode 0x{op:02x} at byte {pos}")
            }
            PickleError::Malformed(why) => write!(f, "malformed pickle: {why}"),
        }
    }
}

type PResult<T> = Result<T, PickleError>;

fn malformed<T>(why: impl Into<String>) -> PResult<T> {
    Err(PickleError::Malformed(why.into()))
}

/// The element type of a torch storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StorageDType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDType {
    /// From a storage class name (`FloatStorage`) or a dtype name (`float32`).
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" | "float64" | "double" => Self::F64,
            "FloatStorage" | "float32" | "float" => Self::F32,
            "HalfStorage" | "float16" | "half" => Self::F16,
            "BFloat16Storage" | "bfloat16" => Self::BF16,
            "LongStorage" | "int64" | "long" => Self::I64,
            "IntStorage" | "int32" | "int" => Self::I32,
            "ShortStorage" | "int16" | "short" => Self::I16,
            "CharStorage" | "int8" => Self::I8,
            "ByteStorage" | "uint8" => Self::U8,
            "BoolStorage" | "bool" => Self::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub(crate) fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }
}

/// A storage named by a persistent id: the archive entry `data/<key>`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StorageRef {
    /// The entry name under `data/`.
    pub key: String,
    /// The element type (`None` for an untyped storage whose dtype comes with the tensor).
    pub dtype: Option<StorageDType>,
    /// Number of elements (bytes for untyped storages) the storage holds.
    pub numel: usize,
}

/// A strided view of a storage, as `_rebuild_tensor_v2` describes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    pub dtype: StorageDType,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

/// A shared, mutable container (pickle's memo makes lists and dicts shareable).
pub(crate) type Shared<T> = Rc<RefCell<T>>;

/// A value built by the machine.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits (kept opaque).
    BigInt,
    #[allow(dead_code)] // kept for Debug output and tests
    Float(f64),
    Str(Rc<str>),
    #[allow(dead_code)] // kept for Debug output
    Bytes(Rc<[u8]>),
    Tuple(Rc<[Value]>),
    List(Shared<Vec<Value>>),
    Dict(Shared<Vec<(Value, Value)>>),
    /// `module.name`, not resolved.
    Global(Rc<str>, Rc<str>),
    Storage(StorageRef),
    Tensor(Rc<TensorRef>),
    /// An instance of a class we do not model (its contents are not needed).
    #[allow(dead_code)] // the class name, kept for Debug output
    Object(Rc<str>),
    /// The mark pushed by MARK.
    Mark,
}

impl Value {
    fn as_usize(&self) -> Option<usize> {
        match self {
            Value::Int(i) if *i >= 0 => Some(*i as usize),
            Value::Bool(b) => Some(usize::from(*b)),
            _ => None,
        }
    }

    fn as_usize_tuple(&self) -> Option<Vec<usize>> {
        match self {
            Value::Tuple(items) => items.iter().map(Value::as_usize).collect(),
            Value::List(items) => items.borrow().iter().map(Value::as_usize).collect(),
            _ => None,
        }
    }

    fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::Tuple(items) => Some(items.to_vec()),
            Value::List(items) => Some(items.borrow().clone()),
            _ => None,
        }
    }
}

/// Executes a pickle and returns the value it builds.
pub(crate) fn load(data: &[u8]) -> PResult<Value> {
    Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    }
    .run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(PickleError::Truncated)?;
        let bytes = self.data.get(self.pos..end).ok_or(PickleError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> PResult<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn len_u64(&mut self) -> PResult<usize> {
        usize::try_from(u64::from_le_bytes(self.le()?)).map_err(|_| PickleError::Truncated)
    }

    /// A text line (protocol 0 arguments), without the newline.
    fn line(&mut self) -> PResult<&'a str> {
        let rest = self.data.get(self.pos..).ok_or(PickleError::Truncated)?;
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated)?;
        let line = &rest[..n];
        self.pos += n + 1;
        std::str::from_utf8(line).or_else(|_| malformed("a text argument is not UTF-8"))
    }

    fn pop(&mut self) -> PResult<Value> {
        match self.stack.pop() {
            Some(Value::Mark) | None => malformed("stack underflow"),
            Some(v) => Ok(v),
        }
    }

    fn top(&mut self) -> PResult<&mut Value> {
        self.stack
            .last_mut()
            .ok_or(PickleError::Malformed("stack underflow".into()))
    }

    /// Pops everything above the last mark (and the mark).
    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let Some(at) = self.marks.pop() else {
            return malformed("no mark on the stack");
        };
        if at > self.stack.len() {
            return malformed("mark above the stack");
        }
        let items = self.stack.split_off(at);
        // Remove the mark itself.
        match self.stack.pop() {
            Some(Value::Mark) => Ok(items),
            _ => malformed("mark lost"),
        }
    }

    fn memo_get(&self, idx: u64) -> PResult<Value> {
        match self.memo.get(&idx) {
            Some(v) => Ok(v.clone()),
            None => malformed(format!("memo entry {idx} is not defined")),
        }
    }

    fn memo_put(&mut self, idx: u64) -> PResult<()> {
        let v = match self.stack.last() {
            Some(Value::Mark) | None => return malformed("nothing to memoize"),
            Some(v) => v.clone(),
        };
        self.memo.insert(idx, v);
        Ok(())
    }

    fn push_str(&mut self, bytes: &[u8]) -> PResult<()> {
        let s = std::str::from_utf8(bytes).or_else(|_| malformed("a string is not UTF-8"))?;
        self.stack.push(Value::Str(s.into()));
        Ok(())
    }

    fn run(mut self) -> PResult<Value> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.take(8)?; // FRAME: a hint only
                }
                b'.' => return self.pop(), // STOP
                b'(' => {
                    self.marks.push(self.stack.len() + 1);
                    self.stack.push(Value::Mark);
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a | 0x8b => {
                    // LONG1 / LONG4: little-endian two's complement of n bytes.
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        let n = i32::from_le_bytes(self.le()?);
                        usize::try_from(n).or_else(|_| malformed("negative LONG4 length"))?
                    };
                    let bytes = self.take(n)?;
                    self.stack.push(long_from_bytes(bytes));
                }
                b'I' => {
                    let line = self.line()?;
                    let v = match line {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(s.parse().or_else(|_| malformed("bad INT"))?),
                    };
                    self.stack.push(v);
                }
                b'L' => {
                    let line = self.line()?.trim_end_matches('L');
                    self.stack
                        .push(line.parse().map(Value::Int).unwrap_or(Value::BigInt));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.stack.push(Value::Float(v));
                }
                b'F' => {
                    let v = self.line()?.parse().or_else(|_| malformed("bad FLOAT"))?;
                    self.stack.push(Value::Float(v));
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.le()?) as usize;
                    let bytes = self.take(n)?;
                    self.push_str(bytes)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?;
                    self.push_str(bytes)?;
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let bytes = self.take(n)?;
                    self.push_str(bytes)?;
                }
                b'T' | b'U' => {
                    // BINSTRING / SHORT_BINSTRING: Python 2 byte strings, read as Latin-1.
                    let n = if op == b'T' {
                        let n = i32::from_le_bytes(self.le()?);
                        usize::try_from(n).or_else(|_| malformed("negative BINSTRING length"))?
                    } else {
                        self.u8()? as usize
                    };
                    let s: String = self.take(n)?.iter().map(|&b| b as char).collect();
                    self.stack.push(Value::Str(s.into()));
                }
                b'V' => {
                    let line = self.line()?;
                    self.stack.push(Value::Str(line.into()));
                }
                b'S' => {
                    let line = self.line()?;
                    let s = line.trim_matches(|c| c == '\'' || c == '"');
                    self.stack.push(Value::Str(s.into()));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => u32::from_le_bytes(self.le()?) as usize,
                        b'C' => self.u8()? as usize,
                        _ => self.len_u64()?,
                    };
                    let bytes = self.take(n)?;
                    self.stack.push(Value::Bytes(bytes.into()));
                }
                b')' => self.stack.push(Value::Tuple(Rc::from(Vec::new()))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items.into()));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return malformed("stack underflow in TUPLEn");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    if items.iter().any(|v| matches!(v, Value::Mark)) {
                        return malformed("mark inside TUPLEn");
                    }
                    self.stack.push(Value::Tuple(items.into()));
                }
                b']' => self.stack.push(Value::List(Rc::default())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                0x8f => self.stack.push(Value::List(Rc::default())), // EMPTY_SET
                0x90 => {
                    let items = self.pop_mark()?; // ADDITEMS
                    self.append(items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?; // FROZENSET
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'}' => self.stack.push(Value::Dict(Rc::default())),
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    self.stack.push(Value::Dict(Rc::new(RefCell::new(pairs))));
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(module.into(), name.into()));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => return malformed("STACK_GLOBAL needs two strings"),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = reduce(callable, args)?;
                    self.stack.push(v);
                }
                0x81 => {
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    self.stack.push(instantiate(&cls));
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    self.stack.push(instantiate(&cls));
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return malformed("OBJ without a class");
                    }
                    let cls = items.remove(0);
                    self.stack.push(instantiate(&cls));
                }
                b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.pop_mark()?;
                    self.stack
                        .push(Value::Object(format!("{module}.{name}").into()));
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    build(target, state);
                }
                b'p' => {
                    let idx = self
                        .line()?
                        .parse()
                        .or_else(|_| malformed("bad PUT index"))?;
                    self.memo_put(idx)?;
                }
                b'q' => {
                    let idx = self.u8()? as u64;
                    self.memo_put(idx)?;
                }
                b'r' => {
                    let idx = u32::from_le_bytes(self.le()?) as u64;
                    self.memo_put(idx)?;
                }
                0x94 => {
                    let idx = self.memo.len() as u64;
                    self.memo_put(idx)?;
                }
                b'g' => {
                    let idx = self
                        .line()?
                        .parse()
                        .or_else(|_| malformed("bad GET index"))?;
                    let v = self.memo_get(idx)?;
                    self.stack.push(v);
                }
                b'h' => {
                    let idx = self.u8()? as u64;
                    let v = self.memo_get(idx)?;
                    self.stack.push(v);
                }
                b'j' => {
                    let idx = u32::from_le_bytes(self.le()?) as u64;
                    let v = self.memo_get(idx)?;
                    self.stack.push(v);
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(persistent_load(&pid)?);
                }
                b'P' => {
                    let _pid = self.line()?;
                    self.stack.push(Value::Object("persistent id".into()));
                }
                other => return Err(PickleError::UnknownOpcode(other, at)),
            }
        }
    }

    fn append(&mut self, items: Vec<Value>) -> PResult<()> {
        match self.top()? {
            Value::List(list) => {
                list.borrow_mut().extend(items);
                Ok(())
            }
            // Appending to an object we do not model (a custom list subclass): ignore.
            Value::Object(_) => Ok(()),
            _ => malformed("APPEND to something that is not a list"),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> PResult<()> {
        let pairs = pairs(items)?;
        match self.top()? {
            Value::Dict(dict) => {
                dict.borrow_mut().extend(pairs);
                Ok(())
            }
            Value::Object(_) => Ok(()),
            _ => malformed("SETITEM on something that is not a dict"),
        }
    }
}

fn pairs(items: Vec<Value>) -> PResult<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return malformed("odd number of dict items");
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn long_from_bytes(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() > 8 {
        return Value::BigInt;
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut buf = if negative { [0xffu8; 8] } else { [0u8; 8] };
    buf[..bytes.len()].copy_from_slice(bytes);
    Value::Int(i64::from_le_bytes(buf))
}

/// The object a class instantiates to: dict subclasses we know become dicts, others opaque.
fn instantiate(cls: &Value) -> Value {
    match cls {
        Value::Global(m, n) if is_dict_class(m, n) => Value::Dict(Rc::default()),
        Value::Global(m, n) => Value::Object(format!("{m}.{n}").into()),
        _ => Value::Object("instance".into()),
    }
}

fn is_dict_class(module: &str, name: &str) -> bool {
    matches!(
        (module, name),
        ("collections", "OrderedDict") | ("builtins", "dict") | ("__builtin__", "dict")
    )
}

/// BUILD: attaches state; only opaque objects take it, and we do not need it.
fn build(_target: &mut Value, _state: Value) {}

/// `callable(*args)` for the callables that matter; other calls make opaque objects.
fn reduce(callable: Value, args: Value) -> PResult<Value> {
    let Value::Global(module, name) = &callable else {
        return Ok(Value::Object("call result".into()));
    };
    let args = args.items().unwrap_or_default();
    match (&**module, &**name) {
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            rebuild_tensor(&args, None)
        }
        ("torch._utils", "_rebuild_tensor_v3") => {
            let dtype = match args.get(6) {
                Some(Value::Global(_, n)) => StorageDType::from_name(n),
                _ => None,
            };
            rebuild_tensor(&args, dtype)
        }
        ("torch._utils", "_rebuild_parameter")
        | ("torch._utils", "_rebuild_parameter_with_state") => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            _ => Ok(Value::Object("parameter".into())),
        },
        (m, n) if is_dict_class(m, n) => {
            // OrderedDict() or OrderedDict([(k, v), …]).
            let mut out = Vec::new();
            if let Some(first) = args.first().and_then(Value::items) {
                for pair in first {
                    if let Some(kv) = pair.items()
                        && kv.len() == 2
                    {
                        out.push((kv[0].clone(), kv[1].clone()));
                    }
                }
            }
            Ok(Value::Dict(Rc::new(RefCell::new(out))))
        }
        (m, n) => Ok(Value::Object(format!("{m}.{n}").into())),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, …)`.
fn rebuild_tensor(args: &[Value], dtype: Option<StorageDType>) -> PResult<Value> {
    let (Some(Value::Storage(storage)), Some(offset), Some(size), Some(stride)) = (
        args.first(),
        args.get(1).and_then(Value::as_usize),
        args.get(2).and_then(Value::as_usize_tuple),
        args.get(3).and_then(Value::as_usize_tuple),
    ) else {
        // A tensor not backed by a plain storage (meta, sparse, …): not loadable, not fatal.
        return Ok(Value::Object("unsupported tensor".into()));
    };
    if size.len() != stride.len() {
        return malformed("tensor size and stride differ in length");
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
fn persistent_load(pid: &Value) -> PResult<Value> {
    let Some(items) = pid.items() else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_programs() {
        // {'a': [1, -2, 3.5], 'b': ('x', True, None)} at protocol 2.
        let data: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00eX\x01\x00\x00\x00bq\x03X\x01\x00\x00\x00xq\x04\x88N\x87q\x05u.";
        let v = load(data).expect("program runs");
        let Value::Dict(d) = v else {
            panic!("not a dict")
        };
        let d = d.borrow();
        assert_eq!(d.len(), 2);
        match &d[0].1 {
            Value::List(l) => {
                let l = l.borrow();
                assert!(matches!(l[0], Value::Int(1)));
                assert!(matches!(l[1], Value::Int(-2)));
                assert!(matches!(l[2], Value::Float(f) if f == 3.5));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&d[1].1, Value::Tuple(t) if t.len() == 3));
    }

    #[test]
    fn damaged_programs_are_errors_not_panics() {
        let good: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x05u.";
        assert!(load(good).is_ok());
        for cut in 0..good.len() {
            assert!(load(&good[..cut]).is_err(), "prefix of {cut} bytes");
        }
        assert!(matches!(load(b"h\x07."), Err(PickleError::Malformed(_))));
        assert!(matches!(
            load(b"\xff"),
            Err(PickleError::UnknownOpcode(0xff, 0))
        ));
        assert!(load(b"u.").is_err());
        assert!(load(b"X\xff\xff\xff\xff").is_err());
        assert!(matches!(long_from_bytes(&[0xff]), Value::Int(-1)));
        assert!(matches!(long_from_bytes(&[0x00, 0x01]), Value::Int(256)));
    }
}
