// The FlatBuffers wire format of schemas/worker_api.fbs, hand-written (no FlatBuffers package is
// available offline): a bounds-checked reader and a small forward writer. Every offset read from
// a buffer is checked against its length before use; a bad buffer is a FormatException.
using System;
using System.Collections.Generic;
using System.Globalization;
using System.Text;
using System.Text.Json;
using CloudNative.CloudEvents;

namespace Virtufin.Worker.DevKit
{
    /// <summary>Encodes and decodes worker_api.fbs CloudEvent and WorkerResponse buffers.</summary>
    public static class CloudEventCodec
    {
        // CloudEvent vtable slots (schema field order; part of the ABI).
        private const int SlotId = 0, SlotType = 1, SlotSource = 2, SlotSpecVersion = 3,
            SlotDataContentType = 4, SlotDataSchema = 5, SlotSubject = 6, SlotTime = 7,
            SlotData = 8, SlotExtensions = 9, CloudEventSlots = 10;

        /// <summary>Decodes a CloudEvent buffer (root = CloudEvent).</summary>
        public static unsafe CloudEvent DecodeCloudEvent(byte[] buffer)
        {
            if (buffer == null) throw new ArgumentNullException("buffer");
            fixed (byte* p = buffer)
            {
                return DecodeCloudEvent(p, buffer.Length);
            }
        }

        /// <summary>Decodes a CloudEvent from native memory (for the engine bridge).</summary>
        public static unsafe CloudEvent DecodeCloudEvent(byte* data, int length)
        {
            var r = new FbReader(data, length);
            return ReadCloudEvent(ref r, r.Root());
        }

        /// <summary>Encodes a CloudEvent buffer (root = CloudEvent).</summary>
        public static byte[] EncodeCloudEvent(CloudEvent ev)
        {
            if (ev == null) throw new ArgumentNullException("ev");
            var w = new FbWriter();
            int root = w.Reserve();
            int t = WriteCloudEvent(w, ev);
            w.Patch(root, t);
            return w.ToArray();
        }

        /// <summary>
        /// Encodes a WorkerResponse with a result event, an error message, or both (either may be null).
        /// </summary>
        public static byte[] EncodeWorkerResponse(CloudEvent result, string errorMessage = null)
        {
            var w = new FbWriter();
            EncodeWorkerResponse(w, result, errorMessage);
            return w.ToArray();
        }

        /// <summary>Encodes a WorkerResponse into a reusable writer (for the engine bridge).</summary>
        [System.ComponentModel.EditorBrowsable(System.ComponentModel.EditorBrowsableState.Never)]
        public static void EncodeWorkerResponse(FbWriter w, CloudEvent result, string errorMessage)
        {
            int root = w.Reserve();
            int[] f = w.Table(new bool[] { result != null, errorMessage != null });
            w.Patch(root, f[f.Length - 1]);
            if (result != null) w.Patch(f[0], WriteCloudEvent(w, result));
            if (errorMessage != null) w.Patch(f[1], w.String(errorMessage));
        }

        /// <summary>Decodes a WorkerResponse buffer into its result event and error message.</summary>
        public static unsafe void DecodeWorkerResponse(byte[] buffer, out CloudEvent result, out string errorMessage)
        {
            if (buffer == null) throw new ArgumentNullException("buffer");
            fixed (byte* p = buffer)
            {
                var r = new FbReader(p, buffer.Length);
                int t = r.Root();
                int ev = r.Table(t, 0);
                result = ev == 0 ? null : ReadCloudEvent(ref r, ev);
                errorMessage = r.String(t, 1);
            }
        }

        private static CloudEvent ReadCloudEvent(ref FbReader r, int t)
        {
            var ev = new CloudEvent();
            ev.Id = r.String(t, SlotId);
            ev.Type = r.String(t, SlotType);
            var source = r.String(t, SlotSource);
            if (source != null) ev.Source = new Uri(source, UriKind.RelativeOrAbsolute);
            ev.DataContentType = r.String(t, SlotDataContentType);
            var schema = r.String(t, SlotDataSchema);
            if (schema != null) ev.DataSchema = new Uri(schema, UriKind.RelativeOrAbsolute);
            ev.Subject = r.String(t, SlotSubject);
            var time = r.String(t, SlotTime);
            if (!string.IsNullOrEmpty(time))
            {
                DateTimeOffset parsed;
                if (!DateTimeOffset.TryParse(time, CultureInfo.InvariantCulture, DateTimeStyles.RoundtripKind, out parsed))
                    throw new FormatException("invalid CloudEvent time '" + time + "'");
                ev.Time = parsed;
            }
            byte[] data = r.Bytes(t, SlotData);
            if (data != null)
            {
                if (IsTextual(ev.DataContentType)) ev.Data = Encoding.UTF8.GetString(data);
                else ev.Data = data;
            }
            int n = r.VectorLength(t, SlotExtensions);
            for (int i = 0; i < n; i++)
            {
                int ext = r.VectorTable(t, SlotExtensions, i);
                string name = r.String(ext, 0);
                string value = r.String(ext, 1);
                // Extensions are strings on the wire; a name CloudEvents does not allow is dropped
                // rather than failing the whole event (the supervisor already checked them).
                if (string.IsNullOrEmpty(name) || value == null || ev.SpecVersion.GetAttributeByName(name) != null) continue;
                try { ev[name] = value; } catch (ArgumentException) { }
            }
            return ev;
        }

        private static int WriteCloudEvent(FbWriter w, CloudEvent ev)
        {
            var exts = new List<KeyValuePair<string, string>>();
            foreach (var kv in ev.GetPopulatedAttributes())
            {
                if (kv.Key.IsExtension) exts.Add(new KeyValuePair<string, string>(kv.Key.Name, ExtensionToString(kv.Value)));
            }
            byte[] data = DataToBytes(ev.Data);
            string[] strings = new string[8];
            strings[SlotId] = ev.Id;
            strings[SlotType] = ev.Type;
            strings[SlotSource] = ev.Source == null ? null : ev.Source.OriginalString;
            strings[SlotSpecVersion] = ev.SpecVersion.VersionId;
            strings[SlotDataContentType] = ev.DataContentType;
            strings[SlotDataSchema] = ev.DataSchema == null ? null : ev.DataSchema.OriginalString;
            strings[SlotSubject] = ev.Subject;
            strings[SlotTime] = ev.Time.HasValue ? FormatTime(ev.Time.Value) : null;
            var present = new bool[CloudEventSlots];
            for (int i = 0; i < 8; i++) present[i] = strings[i] != null;
            present[SlotData] = data != null;
            present[SlotExtensions] = exts.Count > 0;
            int[] f = w.Table(present);
            for (int i = 0; i < 8; i++)
            {
                if (strings[i] != null) w.Patch(f[i], w.String(strings[i]));
            }
            if (data != null) w.Patch(f[SlotData], w.Bytes(data));
            if (exts.Count > 0)
            {
                int[] elems = w.TableVector(exts.Count, f[SlotExtensions]);
                for (int i = 0; i < exts.Count; i++)
                {
                    int[] ef = w.Table(new bool[] { true, true });
                    w.Patch(elems[i], ef[2]);
                    w.Patch(ef[0], w.String(exts[i].Key));
                    w.Patch(ef[1], w.String(exts[i].Value));
                }
            }
            return f[CloudEventSlots];
        }

        /// <summary>True for content types whose payload is text (decoded to a string).</summary>
        public static bool IsTextual(string contentType)
        {
            if (string.IsNullOrEmpty(contentType)) return false;
            var ct = contentType;
            int semi = ct.IndexOf(';');
            if (semi >= 0) ct = ct.Substring(0, semi);
            ct = ct.Trim().ToLowerInvariant();
            return ct.StartsWith("text/", StringComparison.Ordinal) || ct == "application/json" || ct.EndsWith("+json", StringComparison.Ordinal)
                || ct == "application/xml" || ct.EndsWith("+xml", StringComparison.Ordinal);
        }

        /// <summary>Wire bytes of a payload: UTF-8 for a string, as is for bytes, JSON otherwise.</summary>
        public static byte[] DataToBytes(object data)
        {
            if (data == null) return null;
            var b = data as byte[];
            if (b != null) return b;
            var s = data as string;
            if (s != null) return Encoding.UTF8.GetBytes(s);
            if (data is JsonElement) return Encoding.UTF8.GetBytes(((JsonElement)data).GetRawText());
            var doc = data as JsonDocument;
            if (doc != null) return Encoding.UTF8.GetBytes(doc.RootElement.GetRawText());
            return UnloadableJson.SerializeToUtf8Bytes(data);
        }

        /// <summary>RFC 3339 text of a time ("Z" for UTC).</summary>
        public static string FormatTime(DateTimeOffset t)
        {
            if (t.Offset == TimeSpan.Zero)
                return t.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.FFFFFFF", CultureInfo.InvariantCulture) + "Z";
            return t.ToString("yyyy-MM-dd'T'HH:mm:ss.FFFFFFFzzz", CultureInfo.InvariantCulture);
        }

        private static string ExtensionToString(object v)
        {
            var s = v as string;
            if (s != null) return s;
            if (v is DateTimeOffset) return FormatTime((DateTimeOffset)v);
            if (v is bool) return (bool)v ? "true" : "false";
            var u = v as Uri;
            if (u != null) return u.OriginalString;
            var f = v as IFormattable;
            if (f != null && (v is int || v is long || v is double || v is float || v is decimal || v is short || v is uint || v is ulong))
                return f.ToString(null, CultureInfo.InvariantCulture);
            return UnloadableJson.Serialize(v);
        }
    }

    /// <summary>Bounds-checked reader over a FlatBuffer in memory.</summary>
    internal unsafe struct FbReader
    {
        private readonly byte* _p;
        private readonly int _len;

        public FbReader(byte* p, int len)
        {
            if (p == null && len != 0) throw new FormatException("invalid flatbuffer: null data");
            if (len < 0) throw new FormatException("invalid flatbuffer: negative length");
            _p = p;
            _len = len;
        }

        private void Check(long pos, long size)
        {
            if (pos < 0 || size < 0 || pos + size > _len)
                throw new FormatException("invalid flatbuffer: offset " + pos + " + " + size + " is outside the " + _len + "-byte buffer");
        }

        private uint U32(long pos) { Check(pos, 4); return (uint)(_p[pos] | (_p[pos + 1] << 8) | (_p[pos + 2] << 16) | (_p[pos + 3] << 24)); }
        private int I32(long pos) { return (int)U32(pos); }
        private int U16(long pos) { Check(pos, 2); return _p[pos] | (_p[pos + 1] << 8); }

        /// <summary>Position of the root table.</summary>
        public int Root()
        {
            long t = U32(0);
            Check(t, 4);
            return (int)t;
        }

        /// <summary>Absolute position of a field in table t, or 0 if absent.</summary>
        public int Field(int t, int slot)
        {
            long vt = (long)t - I32(t);
            int vtSize = U16(vt);
            int tableSize = U16(vt + 2);
            if (vtSize < 4 || (vtSize & 1) != 0) throw new FormatException("invalid flatbuffer: bad vtable size " + vtSize);
            Check(vt, vtSize);
            Check(t, tableSize);
            int entry = 4 + 2 * slot;
            if (entry + 2 > vtSize) return 0;
            int fo = U16(vt + entry);
            if (fo == 0) return 0;
            if (fo + 4 > tableSize) throw new FormatException("invalid flatbuffer: field outside its table");
            return t + fo;
        }

        private long Target(int fieldPos)
        {
            long target = fieldPos + (long)U32(fieldPos);
            Check(target, 4);
            return target;
        }

        public string String(int t, int slot)
        {
            int f = Field(t, slot);
            if (f == 0) return null;
            long s = Target(f);
            long len = U32(s);
            Check(s + 4, len);
            return Encoding.UTF8.GetString(_p + s + 4, (int)len);
        }

        public byte[] Bytes(int t, int slot)
        {
            int f = Field(t, slot);
            if (f == 0) return null;
            long v = Target(f);
            long len = U32(v);
            Check(v + 4, len);
            var b = new byte[len];
            for (long i = 0; i < len; i++) b[i] = _p[v + 4 + i];
            return b;
        }

        public int Table(int t, int slot)
        {
            int f = Field(t, slot);
            if (f == 0) return 0;
            return (int)Target(f);
        }

        public int VectorLength(int t, int slot)
        {
            int f = Field(t, slot);
            if (f == 0) return 0;
            long v = Target(f);
            long n = U32(v);
            Check(v + 4, n * 4);
            return (int)n;
        }

        public int VectorTable(int t, int slot, int i)
        {
            long v = Target(Field(t, slot));
            long elem = v + 4 + 4L * i;
            long target = elem + U32(elem);
            Check(target, 4);
            return (int)target;
        }
    }

    /// <summary>
    /// Writes a FlatBuffer front to back: every table is written before its children, whose
    /// unsigned offsets then point forward as the format requires; vtables precede their tables.
    /// </summary>
    [System.ComponentModel.EditorBrowsable(System.ComponentModel.EditorBrowsableState.Never)]
    public sealed class FbWriter
    {
        private byte[] _buf = new byte[256];
        private int _pos;

        public int Length { get { return _pos; } }
        public byte[] Buffer { get { return _buf; } }

        public void Reset() { _pos = 0; }

        private void Ensure(int n)
        {
            if (_pos + n <= _buf.Length) return;
            int size = _buf.Length * 2;
            while (size < _pos + n) size *= 2;
            Array.Resize(ref _buf, size);
        }

        private void Align(int a)
        {
            Ensure(a);
            while ((_pos & (a - 1)) != 0) _buf[_pos++] = 0;
        }

        private void PutU16(int v) { Ensure(2); _buf[_pos++] = (byte)v; _buf[_pos++] = (byte)(v >> 8); }
        private void PutU32(int v) { Ensure(4); SetU32(_pos, v); _pos += 4; }
        private void SetU32(int at, int v) { _buf[at] = (byte)v; _buf[at + 1] = (byte)(v >> 8); _buf[at + 2] = (byte)(v >> 16); _buf[at + 3] = (byte)(v >> 24); }

        /// <summary>Reserves a 4-byte offset slot to patch later.</summary>
        public int Reserve() { Align(4); int at = _pos; PutU32(0); return at; }

        /// <summary>Points the offset at <paramref name="at"/> to <paramref name="target"/> (forward).</summary>
        public void Patch(int at, int target)
        {
            if (target <= at) throw new InvalidOperationException("flatbuffer offsets must point forward");
            SetU32(at, target - at);
        }

        /// <summary>
        /// Writes a vtable and a table of 4-byte offset fields for the present slots. Returns one
        /// position per slot (the field to patch, 0 if absent) followed by the table position.
        /// </summary>
        public int[] Table(bool[] present)
        {
            int n = present.Length, count = 0;
            for (int i = 0; i < n; i++) if (present[i]) count++;
            Align(4);
            int vt = _pos;
            PutU16(4 + 2 * n);
            PutU16(4 + 4 * count);
            int k = 0;
            for (int i = 0; i < n; i++) PutU16(present[i] ? 4 + 4 * k++ : 0);
            Align(4);
            int t = _pos;
            PutU32(t - vt);
            var result = new int[n + 1];
            for (int i = 0; i < n; i++)
            {
                if (present[i]) { result[i] = _pos; PutU32(0); }
            }
            result[n] = t;
            return result;
        }

        public int String(string s)
        {
            int byteCount = Encoding.UTF8.GetByteCount(s);
            Align(4);
            int at = _pos;
            Ensure(4 + byteCount + 1);
            PutU32(byteCount);
            Encoding.UTF8.GetBytes(s, 0, s.Length, _buf, _pos);
            _pos += byteCount;
            _buf[_pos++] = 0;
            return at;
        }

        public int Bytes(byte[] b)
        {
            Align(4);
            int at = _pos;
            Ensure(4 + b.Length);
            PutU32(b.Length);
            System.Buffer.BlockCopy(b, 0, _buf, _pos, b.Length);
            _pos += b.Length;
            return at;
        }

        /// <summary>Writes a vector of n table offsets, patches the field to it, returns the element slots.</summary>
        public int[] TableVector(int n, int field)
        {
            Align(4);
            int at = _pos;
            PutU32(n);
            var elems = new int[n];
            for (int i = 0; i < n; i++) { elems[i] = _pos; PutU32(0); }
            Patch(field, at);
            return elems;
        }

        public byte[] ToArray()
        {
            var r = new byte[_pos];
            System.Buffer.BlockCopy(_buf, 0, r, 0, _pos);
            return r;
        }
    }
}
