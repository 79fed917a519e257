// A CloudEvent with the public surface of CloudNative.CloudEvents' CloudEvent that workers use,
// so porting a worker is a change of `using`. It carries no formatter machinery: the host hands
// events over as FlatBuffers (see CloudEventCodec).
using System;
using System.Collections.Generic;
using System.Globalization;

namespace Virtufin.Worker.DevKit
{
    /// <summary>CloudEvents spec versions (only 1.0 is used on the wire).</summary>
    public enum CloudEventsSpecVersion
    {
        /// <summary>CloudEvents 1.0.</summary>
        V1_0,
    }

    /// <summary>One CloudEvent: core attributes as properties, extensions through the indexer.</summary>
    public sealed class CloudEvent
    {
        private readonly Dictionary<string, object> _extensions = new Dictionary<string, object>(StringComparer.Ordinal);

        /// <summary>A 1.0 event.</summary>
        public CloudEvent() { }

        /// <summary>A 1.0 event (the spec-version argument mirrors CloudNative's constructor).</summary>
        public CloudEvent(CloudEventsSpecVersion specVersion) { }

        /// <summary>The event id.</summary>
        public string Id { get; set; }
        /// <summary>The event type.</summary>
        public string Type { get; set; }
        /// <summary>The event source (a URI reference).</summary>
        public Uri Source { get; set; }
        /// <summary>The subject.</summary>
        public string Subject { get; set; }
        /// <summary>The time the event happened.</summary>
        public DateTimeOffset? Time { get; set; }
        /// <summary>Content type of <see cref="Data"/>.</summary>
        public string DataContentType { get; set; }
        /// <summary>Schema of <see cref="Data"/>.</summary>
        public Uri DataSchema { get; set; }
        /// <summary>
        /// The payload: a <c>string</c> for textual content types (text/*, JSON, XML) and a
        /// <c>byte[]</c> otherwise when decoded from the wire; on the way out a string is sent as
        /// UTF-8, a byte[] as is and any other object as JSON.
        /// </summary>
        public object Data { get; set; }
        /// <summary>Always "1.0".</summary>
        public string SpecVersion { get { return "1.0"; } }

        /// <summary>Names of the core attributes, in wire order.</summary>
        public static readonly string[] CoreAttributeNames = { "id", "type", "source", "specversion", "datacontenttype", "dataschema", "subject", "time" };

        /// <summary>Extension attributes (string values on the wire), without the core attributes.</summary>
        public IReadOnlyDictionary<string, object> ExtensionAttributes { get { return _extensions; } }

        /// <summary>
        /// Gets or sets an attribute by name: core attributes map to their properties, anything
        /// else is an extension. Setting null removes an extension.
        /// </summary>
        public object this[string name]
        {
            get
            {
                if (name == null) throw new ArgumentNullException("name");
                switch (name)
                {
                    case "id": return Id;
                    case "type": return Type;
                    case "source": return Source;
                    case "specversion": return SpecVersion;
                    case "datacontenttype": return DataContentType;
                    case "dataschema": return DataSchema;
                    case "subject": return Subject;
                    case "time": return Time;
                }
                object v;
                return _extensions.TryGetValue(name, out v) ? v : null;
            }
            set
            {
                if (name == null) throw new ArgumentNullException("name");
                switch (name)
                {
                    case "id": Id = value == null ? null : value.ToString(); return;
                    case "type": Type = value == null ? null : value.ToString(); return;
                    case "source": Source = ToUri(value); return;
                    case "specversion": return;
                    case "datacontenttype": DataContentType = value == null ? null : value.ToString(); return;
                    case "dataschema": DataSchema = ToUri(value); return;
                    case "subject": Subject = value == null ? null : value.ToString(); return;
                    case "time": Time = ToTime(value); return;
                }
                if (value == null) _extensions.Remove(name);
                else _extensions[name] = value;
            }
        }

        /// <summary>True when id, type and source are set (the attributes CloudEvents requires).</summary>
        public bool IsValid { get { return !string.IsNullOrEmpty(Id) && !string.IsNullOrEmpty(Type) && Source != null; } }

        /// <summary>The payload as bytes (UTF-8 for a string), or null.</summary>
        public byte[] DataAsBytes()
        {
            return CloudEventCodec.DataToBytes(Data);
        }

        /// <summary>The payload as text (UTF-8 decoded if it is bytes), or null.</summary>
        public string DataAsString()
        {
            if (Data == null) return null;
            var s = Data as string;
            if (s != null) return s;
            var b = Data as byte[];
            if (b != null) return System.Text.Encoding.UTF8.GetString(b);
            return System.Text.Encoding.UTF8.GetString(CloudEventCodec.DataToBytes(Data));
        }

        internal static Uri ToUri(object value)
        {
            if (value == null) return null;
            var u = value as Uri;
            return u ?? new Uri(value.ToString(), UriKind.RelativeOrAbsolute);
        }

        internal static DateTimeOffset? ToTime(object value)
        {
            if (value == null) return null;
            if (value is DateTimeOffset) return (DateTimeOffset)value;
            if (value is DateTime) return new DateTimeOffset((DateTime)value);
            return DateTimeOffset.Parse(value.ToString(), CultureInfo.InvariantCulture, DateTimeStyles.RoundtripKind);
        }
    }
}
