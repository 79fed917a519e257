//! A FlatBuffers verifier written out by hand for the few fixed tables of every call:
//! `Process` and `ProcessResult` inside their `Frame` (`frame`), and the plugin's
//! `WorkerResponse` (`response`).
//!
//! The generic verifier (`flatbuffers::Verifier`) costs ~100-140 ns per frame on the call path
//! (docs/benchmarks.md, "Lanes: fourth pass"): every step returns its large error enum through
//! `?`, field names travel as `Cow`s, each table is a `TableVerifier` moved by value. This
//! [`Checker`] makes the same checks, in the same order, with the same limits (alignment
//! relative to the buffer's start, every range inside the buffer, the "apparent size" and the
//! table count), returns a two-word [`Refusal`], and reads the fields as it checks them, so a
//! caller gets its borrowed view in the same pass. Every read goes through `<[u8]>::get`, so a
//! bug here refuses a frame, it cannot read out of bounds; the one `unsafe` turns a slice that
//! `is_ascii` accepted into a `&str` without `from_utf8`'s second pass.
//!
//! The contract, proven by `tests.rs` (valid frames of many shapes, and every single-byte
//! change and every truncation of them, random bytes, hostile offsets and lengths): for these
//! tables the hand verifier accepts exactly what `flatbuffers` accepts, and reads the same
//! values. On a refusal the caller runs the generic verifier once more for its error (with its
//! trace): a refused frame is rare and never on the fast path.
//!
//! Tables of any other kind are not checked here: the callers hand them to the generic
//! verifier (`Message::decode` always uses it).

pub(crate) mod frame;
pub(crate) mod response;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use flatbuffers::InvalidFlatbuffer;

/// Why the hand verifier refused a buffer (positions are offsets into the buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `start..end` is not inside the buffer.
    Range { start: usize, end: usize },
    /// A `ty` at `pos` is not aligned to its size (relative to the buffer's start).
    Unaligned { pos: usize, ty: &'static str },
    /// The table at `pos` names a vtable outside the buffer.
    SOffset { pos: usize, soffset: i32 },
    /// The string at `start..end` is not UTF-8.
    Utf8 { start: usize, end: usize },
    /// The string at `start..end` has no 0 after it.
    NoNul { start: usize, end: usize },
    /// A union has its type without its value or the other way round.
    InconsistentUnion,
    /// The bytes visited add up to more than the limit (overlapping ranges).
    ApparentSize,
    /// More tables than the limit.
    TooManyTables,
}

impl Refusal {
    /// The same refusal as `flatbuffers`' error, for a caller whose generic verifier accepted
    /// what this one refused (never seen: the differential tests check that they agree).
    pub(crate) fn into_invalid(self, buf: &[u8]) -> InvalidFlatbuffer {
        match self {
            Refusal::Range { start, end } => InvalidFlatbuffer::RangeOutOfBounds {
                range: start..end,
                error_trace: Default::default(),
            },
            Refusal::Unaligned { pos, ty } => InvalidFlatbuffer::Unaligned {
                position: pos,
                unaligned_type: Cow::Borrowed(ty),
                error_trace: Default::default(),
            },
            Refusal::SOffset { pos, soffset } => InvalidFlatbuffer::SignedOffsetOutOfBounds {
                soffset,
                position: pos,
                error_trace: Default::default(),
            },
            Refusal::Utf8 { start, end } => match buf.get(start..end).map(std::str::from_utf8) {
                Some(Err(error)) => InvalidFlatbuffer::Utf8Error {
                    error,
                    range: start..end,
                    error_trace: Default::default(),
                },
                _ => InvalidFlatbuffer::RangeOutOfBounds {
                    range: start..end,
                    error_trace: Default::default(),
                },
            },
            Refusal::NoNul { start, end } => InvalidFlatbuffer::MissingNullTerminator {
                range: start..end,
                error_trace: Default::default(),
            },
            Refusal::InconsistentUnion => InvalidFlatbuffer::InconsistentUnion {
                field: Cow::Borrowed("payload_type"),
                field_type: Cow::Borrowed("payload"),
                error_trace: Default::default(),
            },
            Refusal::ApparentSize => InvalidFlatbuffer::ApparentSizeTooLarge,
            Refusal::TooManyTables => InvalidFlatbuffer::TooManyTables,
        }
    }
}

pub(crate) type Step<T> = Result<T, Refusal>;

/// A table whose vtable has been checked: `vt..vt + vt_len` is inside the buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Table {
    pos: usize,
    vt: usize,
    vt_len: usize,
}

/// The verifier's state over one buffer: what `flatbuffers::Verifier` keeps, minus the depth
/// (the fixed schemas checked here nest at most three tables deep, under its limit of 64).
pub(crate) struct Checker<'a> {
    buf: &'a [u8],
    apparent: usize,
    max_apparent: usize,
    tables: usize,
    max_tables: usize,
}

impl<'a> Checker<'a> {
    pub(crate) fn new(buf: &'a [u8], max_apparent: usize, max_tables: usize) -> Self {
        Checker {
            buf,
            apparent: 0,
            max_apparent,
            tables: 0,
            max_tables,
        }
    }

    /// `Verifier::range_in_buffer`: inside the buffer, and counted in the apparent size.
    #[inline(always)]
    fn range(&mut self, start: usize, size: usize) -> Step<()> {
        let end = start.saturating_add(size);
        if end > self.buf.len() {
            return Err(Refusal::Range { start, end });
        }
        self.apparent = self.apparent.saturating_add(size);
        if self.apparent > self.max_apparent {
            return Err(Refusal::ApparentSize);
        }
        Ok(())
    }

    /// `Verifier::in_buffer::<T>` for a scalar of `N` bytes (aligned to `N`), and its bytes.
    #[inline(always)]
    fn scalar<const N: usize>(&mut self, pos: usize, ty: &'static str) -> Step<[u8; N]> {
        if !pos.is_multiple_of(N) {
            return Err(Refusal::Unaligned { pos, ty });
        }
        // `get` is `range`'s bounds check (one compare instead of two), then the same count.
        let Some(bytes) = self
            .buf
            .get(pos..pos.saturating_add(N))
            .and_then(|s| <[u8; N]>::try_from(s).ok())
        else {
            return Err(Refusal::Range {
                start: pos,
                end: pos.saturating_add(N),
            });
        };
        self.apparent = self.apparent.saturating_add(N);
        if self.apparent > self.max_apparent {
            return Err(Refusal::ApparentSize);
        }
        Ok(bytes)
    }

    #[inline(always)]
    fn u16_at(&mut self, pos: usize) -> Step<usize> {
        Ok(u16::from_le_bytes(self.scalar::<2>(pos, "u16")?) as usize)
    }

    /// `ForwardsUOffset::run_verifier`: the position a uoffset at `pos` points to.
    #[inline(always)]
    pub(crate) fn follow(&mut self, pos: usize) -> Step<usize> {
        let off = u32::from_le_bytes(self.scalar::<4>(pos, "u32")?) as usize;
        Ok(off.saturating_add(pos))
    }

    /// `Verifier::visit_table`: the table at `pos`, its vtable checked.
    #[inline(always)]
    pub(crate) fn table(&mut self, pos: usize) -> Step<Table> {
        let soffset = i32::from_le_bytes(self.scalar::<4>(pos, "i32")?);
        // Signed offsets are subtracted (a vtable usually sits before its table).
        let vt = if soffset > 0 {
            pos.checked_sub(soffset.unsigned_abs() as usize)
        } else {
            pos.checked_add(soffset.unsigned_abs() as usize)
        };
        let vt = match vt {
            Some(vt) if vt < self.buf.len() => vt,
            _ => return Err(Refusal::SOffset { pos, soffset }),
        };
        let vt_len = self.u16_at(vt)?;
        let end = vt.saturating_add(vt_len);
        if !end.is_multiple_of(2) {
            return Err(Refusal::Unaligned {
                pos: end,
                ty: "u16",
            });
        }
        self.range(vt, vt_len)?;
        self.tables += 1;
        if self.tables > self.max_tables {
            return Err(Refusal::TooManyTables);
        }
        Ok(Table { pos, vt, vt_len })
    }

    /// `TableVerifier::deref`: where field `voff` is, if the table has it.
    #[inline(always)]
    pub(crate) fn field(&mut self, t: Table, voff: usize) -> Step<Option<usize>> {
        if voff < t.vt_len {
            let at = self.u16_at(t.vt.saturating_add(voff))?;
            if at > 0 {
                return Ok(Some(t.pos.saturating_add(at)));
            }
        }
        Ok(None)
    }

    /// A `u8` (or a `ubyte` enum) field; 0 when absent, as every default here.
    #[inline(always)]
    pub(crate) fn u8_field(&mut self, t: Table, voff: usize) -> Step<u8> {
        match self.field(t, voff)? {
            Some(p) => self.u8_at(p),
            None => Ok(0),
        }
    }

    /// A `u8` at `pos` (the union type of a `Frame`).
    #[inline(always)]
    pub(crate) fn u8_at(&mut self, pos: usize) -> Step<u8> {
        Ok(self.scalar::<1>(pos, "u8")?[0])
    }

    #[inline(always)]
    pub(crate) fn i32_field(&mut self, t: Table, voff: usize) -> Step<i32> {
        match self.field(t, voff)? {
            Some(p) => Ok(i32::from_le_bytes(self.scalar::<4>(p, "i32")?)),
            None => Ok(0),
        }
    }

    #[inline(always)]
    pub(crate) fn u64_field(&mut self, t: Table, voff: usize) -> Step<u64> {
        match self.field(t, voff)? {
            Some(p) => Ok(u64::from_le_bytes(self.scalar::<8>(p, "u64")?)),
            None => Ok(0),
        }
    }

    /// `verify_vector_range::<T>` for elements of `size` bytes (1 or 4): the vector's body as
    /// `start..end`. Its alignment check of the first element cannot fail for these sizes
    /// (`start` is a 4-aligned length's position + 4), so it is not repeated here.
    #[inline(always)]
    fn vector(&mut self, pos: usize, size: usize) -> Step<(usize, usize)> {
        let len = u32::from_le_bytes(self.scalar::<4>(pos, "u32")?) as usize;
        let start = pos.saturating_add(4);
        let bytes = len.saturating_mul(size);
        self.range(start, bytes)?;
        Ok((start, start.saturating_add(bytes)))
    }

    /// A `[ubyte]` field; empty when absent (as the hot views read it).
    #[inline(always)]
    pub(crate) fn bytes_field(&mut self, t: Table, voff: usize) -> Step<&'a [u8]> {
        let Some(p) = self.field(t, voff)? else {
            return Ok(&[]);
        };
        let at = self.follow(p)?;
        let (start, end) = self.vector(at, 1)?;
        self.buf
            .get(start..end)
            .ok_or(Refusal::Range { start, end })
    }

    /// A `string` field: UTF-8 and followed by a 0 (`<&str as Verifiable>`); empty when absent.
    #[inline(always)]
    pub(crate) fn str_field(&mut self, t: Table, voff: usize) -> Step<&'a str> {
        let Some(p) = self.field(t, voff)? else {
            return Ok("");
        };
        let at = self.follow(p)?;
        self.string(at)
    }

    #[inline(always)]
    fn string(&mut self, at: usize) -> Step<&'a str> {
        let (start, end) = self.vector(at, 1)?;
        let body = self
            .buf
            .get(start..end)
            .ok_or(Refusal::Range { start, end })?;
        let s = if body.is_ascii() {
            // SAFETY: every byte is below 0x80, and ASCII is valid UTF-8 (the usual case:
            // ids, types and names; `is_ascii` is cheaper than `from_utf8`'s set-up for them).
            unsafe { std::str::from_utf8_unchecked(body) }
        } else {
            std::str::from_utf8(body).map_err(|_| Refusal::Utf8 { start, end })?
        };
        if self.buf.get(end) != Some(&0) {
            return Err(Refusal::NoNul { start, end });
        }
        Ok(s)
    }

    /// A vector of tables (`[Extension]`): each element's table position, checked as
    /// `Vector<ForwardsUOffset<T>>` does (the vector, then each uoffset), to `each`.
    #[inline(always)]
    pub(crate) fn tables_field(
        &mut self,
        t: Table,
        voff: usize,
        mut each: impl FnMut(&mut Self, usize) -> Step<()>,
    ) -> Step<()> {
        let Some(p) = self.field(t, voff)? else {
            return Ok(());
        };
        let at = self.follow(p)?;
        let (start, end) = self.vector(at, 4)?;
        for elem in (start..end).step_by(4) {
            let table = self.follow(elem)?;
            each(self, table)?;
        }
        Ok(())
    }
}
