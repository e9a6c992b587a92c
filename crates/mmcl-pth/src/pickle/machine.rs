//! The opcodes of the pickle machine (protocols 0–5, as `torch.save` writes them): the stack,
//! its marks and the memo, with every value built counted against
//! [`super::MAX_PICKLE_VALUES`]. Calls and object construction are in [`calls`].

mod calls;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use super::policy::check_reference;
use super::{MAX_PICKLE_VALUES, PResult, PickleError, Value, malformed};
use calls::{build, instantiate};

/// The machine's state: the bytes, the read position, the stack with its marks, and the memo.
pub(super) struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    /// Values built, copied or memoized so far (see [`MAX_PICKLE_VALUES`]).
    values: usize,
}

impl<'a> Machine<'a> {
    /// A machine at the start of `data`.
    pub(super) fn new(data: &'a [u8]) -> Self {
        Machine {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            values: 0,
        }
    }

    /// Counts `n` more values against [`MAX_PICKLE_VALUES`], before they are made.
    fn charge(&mut self, n: usize) -> PResult<()> {
        self.values = self.values.saturating_add(n);
        if self.values > MAX_PICKLE_VALUES {
            return Err(PickleError::TooManyValues);
        }
        Ok(())
    }

    fn push(&mut self, v: Value) -> PResult<()> {
        self.charge(1)?;
        self.stack.push(v);
        Ok(())
    }

    /// A copy of the items of a tuple or list (`None` for other values).
    fn items(&mut self, v: &Value) -> PResult<Option<Vec<Value>>> {
        let n = match v {
            Value::Tuple(items) => items.len(),
            Value::List(items) => items.borrow().len(),
            _ => return Ok(None),
        };
        self.charge(n)?;
        Ok(match v {
            Value::Tuple(items) => Some(items.to_vec()),
            Value::List(items) => Some(items.borrow().clone()),
            _ => None,
        })
    }

    /// The items of a tuple or list of non-negative integers.
    fn usize_items(&mut self, v: Option<&Value>) -> PResult<Option<Vec<usize>>> {
        let Some(v) = v else { return Ok(None) };
        Ok(self
            .items(v)?
            .and_then(|items| items.iter().map(Value::as_usize).collect()))
    }

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

    /// Pushes a copy of memo entry `idx` (GET, BINGET, LONG_BINGET).
    fn push_memo(&mut self, idx: u64) -> PResult<()> {
        let v = match self.memo.get(&idx) {
            Some(v) => v.clone(),
            None => return malformed(format!("memo entry {idx} is not defined")),
        };
        self.push(v)
    }

    /// The memo index argument of the PUT or GET opcode `op`: a text line (PUT, GET), one byte
    /// (BINPUT, BINGET) or four (LONG_BINPUT, LONG_BINGET).
    fn memo_index(&mut self, op: u8) -> PResult<u64> {
        Ok(match op {
            b'p' | b'g' => {
                let name = if op == b'p' { "PUT" } else { "GET" };
                self.line()?
                    .parse()
                    .or_else(|_| malformed(format!("bad {name} index")))?
            }
            b'q' | b'h' => self.u8()? as u64,
            _ => u32::from_le_bytes(self.le()?) as u64,
        })
    }

    /// Calls `callable` with `args` (REDUCE and the opcodes that work like it) and pushes the
    /// result.
    fn push_call(&mut self, callable: &Value, args: &Value) -> PResult<()> {
        let v = self.call(callable, args, false)?;
        self.push(v)
    }

    fn memo_put(&mut self, idx: u64) -> PResult<()> {
        let v = match self.stack.last() {
            Some(Value::Mark) | None => return malformed("nothing to memoize"),
            Some(v) => v.clone(),
        };
        self.charge(1)?;
        self.memo.insert(idx, v);
        Ok(())
    }

    fn push_str(&mut self, bytes: &[u8]) -> PResult<()> {
        let s = std::str::from_utf8(bytes).or_else(|_| malformed("a string is not UTF-8"))?;
        self.push(Value::Str(s.into()))
    }

    /// Executes opcodes until STOP and returns the value on top of the stack.
    pub(super) fn run(mut self) -> PResult<Value> {
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
                    self.push(Value::Mark)?;
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.push(Value::Int(v as i64))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.push(Value::Int(v as i64))?;
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
                    self.push(long_from_bytes(bytes))?;
                }
                b'I' => {
                    let line = self.line()?;
                    let v = match line {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(s.parse().or_else(|_| malformed("bad INT"))?),
                    };
                    self.push(v)?;
                }
                b'L' => {
                    let line = self.line()?.trim_end_matches('L');
                    self.push(line.parse().map(Value::Int).unwrap_or(Value::BigInt))?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.push(Value::Float(v))?;
                }
                b'F' => {
                    let v = self.line()?.parse().or_else(|_| malformed("bad FLOAT"))?;
                    self.push(Value::Float(v))?;
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
                    self.push(Value::Str(s.into()))?;
                }
                b'V' => {
                    let line = self.line()?;
                    self.push(Value::Str(line.into()))?;
                }
                b'S' => {
                    let line = self.line()?;
                    let s = line.trim_matches(|c| c == '\'' || c == '"');
                    self.push(Value::Str(s.into()))?;
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => u32::from_le_bytes(self.le()?) as usize,
                        b'C' => self.u8()? as usize,
                        _ => self.len_u64()?,
                    };
                    let bytes = self.take(n)?;
                    self.push(Value::Bytes(bytes.into()))?;
                }
                b')' => self.push(Value::Tuple(Rc::from(Vec::new())))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items.into()))?;
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
                    self.push(Value::Tuple(items.into()))?;
                }
                b']' => self.push(Value::List(Rc::default()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(items))))?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                0x8f => self.push(Value::List(Rc::default()))?, // EMPTY_SET
                0x90 => {
                    let items = self.pop_mark()?; // ADDITEMS
                    self.append(items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?; // FROZENSET
                    self.push(Value::List(Rc::new(RefCell::new(items))))?;
                }
                b'}' => self.push(Value::Dict(Rc::default()))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    self.push(Value::Dict(Rc::new(RefCell::new(pairs))))?;
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
                    check_reference(module, name)?;
                    self.push(Value::Global(module.into(), name.into()))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            check_reference(&m, &n)?;
                            self.push(Value::Global(m, n))?;
                        }
                        _ => return malformed("STACK_GLOBAL needs two strings"),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.push_call(&callable, &args)?;
                }
                0x81 => {
                    let _args = self.pop()?; // NEWOBJ
                    let cls = self.pop()?;
                    self.push(instantiate(&cls)?)?;
                }
                0x92 => {
                    let _kwargs = self.pop()?; // NEWOBJ_EX
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    self.push(instantiate(&cls)?)?;
                }
                b'o' => {
                    // OBJ calls the class with the arguments: a call like REDUCE.
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return malformed("OBJ without a class");
                    }
                    let cls = items.remove(0);
                    self.push_call(&cls, &Value::Tuple(items.into()))?;
                }
                b'i' => {
                    // INST: a call like REDUCE, with the class named inline.
                    let module = self.line()?;
                    let name = self.line()?;
                    check_reference(module, name)?;
                    let items = self.pop_mark()?;
                    let cls = Value::Global(module.into(), name.into());
                    self.push_call(&cls, &Value::Tuple(items.into()))?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    build(target, state)?;
                }
                b'p' | b'q' | b'r' => {
                    let idx = self.memo_index(op)?;
                    self.memo_put(idx)?;
                }
                0x94 => {
                    let idx = self.memo.len() as u64;
                    self.memo_put(idx)?;
                }
                b'g' | b'h' | b'j' => {
                    let idx = self.memo_index(op)?;
                    self.push_memo(idx)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(&pid)?;
                    self.push(v)?;
                }
                b'P' => {
                    let _pid = self.line()?;
                    self.push(Value::Object("persistent id".into()))?;
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

/// Key-value pairs from a flat list of alternating items.
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

/// The integer of LONG1 / LONG4: little-endian two's complement (opaque beyond 64 bits).
pub(super) fn long_from_bytes(bytes: &[u8]) -> Value {
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
