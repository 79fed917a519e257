// CloudNative.CloudEvents, written here from the public API's shape (CloudNative.CloudEvents 2.x):
// the CloudEvent type the original DevKit's signatures use, so workers written against the
// original documentation compile and bind unchanged. The host loads this assembly into its own
// context and every worker's context is handed the host's copy (the canonical-assembly rule), so
// a worker's CloudEvent and the DevKit's are one Type. Only the event model is here, not the
// formatters: the host moves events as worker_api.fbs FlatBuffers (Virtufin.Worker.DevKit's codec).
using System;
using System.Collections.Generic;
using System.Globalization;

namespace CloudNative.CloudEvents
{
    /// <summary>The type of a CloudEvents attribute value (the spec's type system).</summary>
    public sealed class CloudEventAttributeType
    {
        /// <summary>Boolean.</summary>
        public static readonly CloudEventAttributeType Boolean = new CloudEventAttributeType("Boolean", typeof(bool));
        /// <summary>Integer (32-bit signed).</summary>
        public static readonly CloudEventAttributeType Integer = new CloudEventAttributeType("Integer", typeof(int));
        /// <summary>String.</summary>
        public static readonly CloudEventAttributeType String = new CloudEventAttributeType("String", typeof(string));
        /// <summary>Binary (byte[]).</summary>
        public static readonly CloudEventAttributeType Binary = new CloudEventAttributeType("Binary", typeof(byte[]));
        /// <summary>Absolute URI.</summary>
        public static readonly CloudEventAttributeType Uri = new CloudEventAttributeType("URI", typeof(Uri));
        /// <summary>URI reference (relative allowed).</summary>
        public static readonly CloudEventAttributeType UriReference = new CloudEventAttributeType("URI-reference", typeof(Uri));
        /// <summary>Timestamp (RFC 3339).</summary>
        public static readonly CloudEventAttributeType Timestamp = new CloudEventAttributeType("Timestamp", typeof(DateTimeOffset));

        private CloudEventAttributeType(string name, Type clrType)
        {
            Name = name;
            ClrType = clrType;
        }

        /// <summary>The spec's name of the type.</summary>
        public string Name { get; private set; }
        /// <summary>The CLR type values of this attribute type have.</summary>
        public Type ClrType { get; private set; }

        /// <summary>The canonical string form of a value of this type.</summary>
        public string Format(object value)
        {
            if (value == null) throw new ArgumentNullException("value");
            Validate(value);
            if (value is string) return (string)value;
            if (value is bool) return (bool)value ? "true" : "false";
            if (value is int) return ((int)value).ToString(CultureInfo.InvariantCulture);
            if (value is byte[]) return Convert.ToBase64String((byte[])value);
            if (value is Uri) return ((Uri)value).OriginalString;
            if (value is DateTimeOffset) return FormatTimestamp((DateTimeOffset)value);
            return value.ToString();
        }

        /// <summary>Parses the canonical string form of a value of this type.</summary>
        public object Parse(string text)
        {
            if (text == null) throw new ArgumentNullException("text");
            if (this == String) return text;
            if (this == Boolean)
            {
                if (text == "true") return true;
                if (text == "false") return false;
                throw new ArgumentException("'" + text + "' is not a CloudEvents Boolean (true or false)");
            }
            if (this == Integer) return int.Parse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture);
            if (this == Binary) return Convert.FromBase64String(text);
            if (this == Uri) return new Uri(text, UriKind.Absolute);
            if (this == UriReference) return new Uri(text, UriKind.RelativeOrAbsolute);
            return DateTimeOffset.Parse(text, CultureInfo.InvariantCulture, DateTimeStyles.RoundtripKind);
        }

        /// <summary>Throws ArgumentException unless <paramref name="value"/> is of this type.</summary>
        public void Validate(object value)
        {
            if (value == null) throw new ArgumentNullException("value");
            if (!ClrType.IsInstanceOfType(value))
                throw new ArgumentException("a " + Name + " attribute value must be a " + ClrType.Name + ", not " + value.GetType().Name);
            if (this == Uri && !((Uri)value).IsAbsoluteUri)
                throw new ArgumentException("a URI attribute value must be absolute: " + value);
        }

        /// <summary>The type's spec name.</summary>
        public override string ToString() { return Name; }

        internal static string FormatTimestamp(DateTimeOffset t)
        {
            if (t.Offset == TimeSpan.Zero)
                return t.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.FFFFFFF", CultureInfo.InvariantCulture) + "Z";
            return t.ToString("yyyy-MM-dd'T'HH:mm:ss.FFFFFFFzzz", CultureInfo.InvariantCulture);
        }

        /// <summary>The attribute type a CLR value would have as an extension (String for anything else).</summary>
        internal static CloudEventAttributeType Of(object value)
        {
            if (value is bool) return Boolean;
            if (value is int) return Integer;
            if (value is byte[]) return Binary;
            if (value is Uri) return ((Uri)value).IsAbsoluteUri ? Uri : UriReference;
            if (value is DateTimeOffset) return Timestamp;
            return String;
        }
    }

    /// <summary>A CloudEvents attribute: a name and a type; core attributes belong to a spec version.</summary>
    public sealed class CloudEventAttribute
    {
        private CloudEventAttribute(string name, CloudEventAttributeType type, bool required, bool extension)
        {
            Name = name;
            Type = type;
            IsRequired = required;
            IsExtension = extension;
        }

        /// <summary>The attribute name (lower-case letters and digits).</summary>
        public string Name { get; private set; }
        /// <summary>The attribute's value type.</summary>
        public CloudEventAttributeType Type { get; private set; }
        /// <summary>Whether a valid event must carry it.</summary>
        public bool IsRequired { get; private set; }
        /// <summary>Whether it is an extension (not a core attribute).</summary>
        public bool IsExtension { get; private set; }

        /// <summary>An extension attribute; the name must not be empty or a core attribute's name.</summary>
        public static CloudEventAttribute CreateExtension(string name, CloudEventAttributeType type)
        {
            if (type == null) throw new ArgumentNullException("type");
            ValidateName(name);
            if (CloudEventsSpecVersion.V1_0.GetAttributeByName(name) != null)
                throw new ArgumentException("'" + name + "' is a core CloudEvents attribute, not an extension");
            return new CloudEventAttribute(name, type, false, true);
        }

        internal static CloudEventAttribute Core(string name, CloudEventAttributeType type, bool required)
        {
            return new CloudEventAttribute(name, type, required, false);
        }

        /// <summary>Throws ArgumentException for a name the spec does not allow.</summary>
        public static void ValidateName(string name)
        {
            if (name == null) throw new ArgumentNullException("name");
            if (name.Length == 0) throw new ArgumentException("an attribute name must not be empty");
            // The spec asks for lower-case letters and digits; the host also carries worker config
            // keys as extensions (api_host, ...), so only what cannot travel is refused.
            foreach (char c in name)
            {
                if (char.IsWhiteSpace(c) || char.IsControl(c))
                    throw new ArgumentException("invalid attribute name '" + name + "': no spaces or control characters");
            }
        }

        /// <summary>The canonical string form of a value of this attribute.</summary>
        public string Format(object value) { return Type.Format(value); }
        /// <summary>Parses a value of this attribute from its string form.</summary>
        public object Parse(string text) { return Type.Parse(text); }
        /// <summary>Throws ArgumentException unless the value suits this attribute.</summary>
        public object Validate(object value) { Type.Validate(value); return value; }
        /// <summary>The name.</summary>
        public override string ToString() { return Name; }
    }

    /// <summary>A CloudEvents specification version and its core attributes (only 1.0 exists here).</summary>
    public sealed class CloudEventsSpecVersion
    {
        /// <summary>CloudEvents 1.0.</summary>
        public static readonly CloudEventsSpecVersion V1_0 = new CloudEventsSpecVersion("1.0");
        /// <summary>The default version (1.0).</summary>
        public static CloudEventsSpecVersion Default { get { return V1_0; } }

        private readonly List<CloudEventAttribute> _all;

        private CloudEventsSpecVersion(string versionId)
        {
            VersionId = versionId;
            SpecVersionAttribute = CloudEventAttribute.Core("specversion", CloudEventAttributeType.String, true);
            IdAttribute = CloudEventAttribute.Core("id", CloudEventAttributeType.String, true);
            SourceAttribute = CloudEventAttribute.Core("source", CloudEventAttributeType.UriReference, true);
            TypeAttribute = CloudEventAttribute.Core("type", CloudEventAttributeType.String, true);
            DataContentTypeAttribute = CloudEventAttribute.Core("datacontenttype", CloudEventAttributeType.String, false);
            DataSchemaAttribute = CloudEventAttribute.Core("dataschema", CloudEventAttributeType.Uri, false);
            SubjectAttribute = CloudEventAttribute.Core("subject", CloudEventAttributeType.String, false);
            TimeAttribute = CloudEventAttribute.Core("time", CloudEventAttributeType.Timestamp, false);
            _all = new List<CloudEventAttribute> { IdAttribute, SourceAttribute, TypeAttribute, DataContentTypeAttribute, DataSchemaAttribute, SubjectAttribute, TimeAttribute };
        }

        /// <summary>"1.0".</summary>
        public string VersionId { get; private set; }
        /// <summary>specversion</summary>
        public CloudEventAttribute SpecVersionAttribute { get; private set; }
        /// <summary>id</summary>
        public CloudEventAttribute IdAttribute { get; private set; }
        /// <summary>source</summary>
        public CloudEventAttribute SourceAttribute { get; private set; }
        /// <summary>type</summary>
        public CloudEventAttribute TypeAttribute { get; private set; }
        /// <summary>datacontenttype</summary>
        public CloudEventAttribute DataContentTypeAttribute { get; private set; }
        /// <summary>dataschema</summary>
        public CloudEventAttribute DataSchemaAttribute { get; private set; }
        /// <summary>subject</summary>
        public CloudEventAttribute SubjectAttribute { get; private set; }
        /// <summary>time</summary>
        public CloudEventAttribute TimeAttribute { get; private set; }

        /// <summary>Every core attribute but specversion.</summary>
        public IEnumerable<CloudEventAttribute> AllAttributes { get { return _all; } }
        /// <summary>id, source, type.</summary>
        public IEnumerable<CloudEventAttribute> RequiredAttributes { get { return _all.FindAll(a => a.IsRequired); } }
        /// <summary>The optional core attributes.</summary>
        public IEnumerable<CloudEventAttribute> OptionalAttributes { get { return _all.FindAll(a => !a.IsRequired); } }

        /// <summary>A core attribute by name, or null.</summary>
        public CloudEventAttribute GetAttributeByName(string name)
        {
            if (name == "specversion") return SpecVersionAttribute;
            foreach (var a in _all)
            {
                if (a.Name == name) return a;
            }
            return null;
        }

        /// <summary>The version for a specversion value, or null if unknown.</summary>
        public static CloudEventsSpecVersion FromVersionId(string versionId)
        {
            return versionId == "1.0" ? V1_0 : null;
        }

        /// <summary>The version id.</summary>
        public override string ToString() { return VersionId; }
    }

    /// <summary>
    /// One CloudEvent: core attributes as properties, any attribute through the indexer. Extension
    /// attributes keep the order they were first set in (the host hands <c>correlationid</c> first).
    /// </summary>
    public sealed class CloudEvent
    {
        private readonly List<CloudEventAttribute> _extensionOrder = new List<CloudEventAttribute>();
        private readonly Dictionary<string, object> _extensionValues = new Dictionary<string, object>(StringComparer.Ordinal);

        /// <summary>A 1.0 event.</summary>
        public CloudEvent() : this(CloudEventsSpecVersion.Default, null) { }

        /// <summary>An event of the given spec version.</summary>
        public CloudEvent(CloudEventsSpecVersion specVersion) : this(specVersion, null) { }

        /// <summary>A 1.0 event that knows these extension attributes (typed).</summary>
        public CloudEvent(IEnumerable<CloudEventAttribute> extensionAttributes) : this(CloudEventsSpecVersion.Default, extensionAttributes) { }

        /// <summary>An event of the given spec version that knows these extension attributes.</summary>
        public CloudEvent(CloudEventsSpecVersion specVersion, IEnumerable<CloudEventAttribute> extensionAttributes)
        {
            SpecVersion = specVersion ?? throw new ArgumentNullException("specVersion");
            if (extensionAttributes != null)
            {
                foreach (var a in extensionAttributes)
                {
                    if (a == null || !a.IsExtension) throw new ArgumentException("extensionAttributes must hold extension attributes only");
                    if (!_extensionValues.ContainsKey(a.Name))
                    {
                        _extensionOrder.Add(a);
                        _extensionValues[a.Name] = null;
                    }
                }
            }
        }

        /// <summary>The spec version (1.0).</summary>
        public CloudEventsSpecVersion SpecVersion { get; private set; }
        /// <summary>The event id.</summary>
        public string Id { get; set; }
        /// <summary>The event type.</summary>
        public string Type { get; set; }
        /// <summary>The event source (a URI reference).</summary>
        public Uri Source { get; set; }
        /// <summary>The subject.</summary>
        public string Subject { get; set; }
        /// <summary>When the event happened.</summary>
        public DateTimeOffset? Time { get; set; }
        /// <summary>Content type of <see cref="Data"/>.</summary>
        public string DataContentType { get; set; }
        /// <summary>Schema of <see cref="Data"/> (absolute URI).</summary>
        public Uri DataSchema { get; set; }
        /// <summary>
        /// The payload. From the host: a string for textual content types (text/*, JSON, XML), a
        /// byte[] otherwise. To the host: a string goes as UTF-8, a byte[] as is, anything else as JSON.
        /// </summary>
        public object Data { get; set; }

        /// <summary>The extension attributes this event knows, in the order they were first set.</summary>
        public IEnumerable<CloudEventAttribute> ExtensionAttributes { get { return _extensionOrder.ToArray(); } }

        /// <summary>Every attribute that has a value, core first, then extensions in order.</summary>
        public IEnumerable<KeyValuePair<CloudEventAttribute, object>> GetPopulatedAttributes()
        {
            var list = new List<KeyValuePair<CloudEventAttribute, object>>();
            foreach (var a in SpecVersion.AllAttributes)
            {
                var v = this[a.Name];
                if (v != null) list.Add(new KeyValuePair<CloudEventAttribute, object>(a, v));
            }
            foreach (var a in _extensionOrder)
            {
                object v;
                if (_extensionValues.TryGetValue(a.Name, out v) && v != null) list.Add(new KeyValuePair<CloudEventAttribute, object>(a, v));
            }
            return list;
        }

        /// <summary>A known attribute by name (core or extension), or null.</summary>
        public CloudEventAttribute GetAttribute(string name)
        {
            var core = SpecVersion.GetAttributeByName(name);
            if (core != null) return core;
            foreach (var a in _extensionOrder)
            {
                if (a.Name == name) return a;
            }
            return null;
        }

        /// <summary>
        /// Gets or sets an attribute by name: core attributes map to their properties, anything
        /// else is an extension (a new one takes the type of its first value). Null removes the value.
        /// </summary>
        public object this[string attributeName]
        {
            get
            {
                if (attributeName == null) throw new ArgumentNullException("attributeName");
                switch (attributeName)
                {
                    case "id": return Id;
                    case "type": return Type;
                    case "source": return Source;
                    case "specversion": return SpecVersion.VersionId;
                    case "datacontenttype": return DataContentType;
                    case "dataschema": return DataSchema;
                    case "subject": return Subject;
                    case "time": return Time;
                }
                object v;
                return _extensionValues.TryGetValue(attributeName, out v) ? v : null;
            }
            set
            {
                if (attributeName == null) throw new ArgumentNullException("attributeName");
                switch (attributeName)
                {
                    case "id": Id = (string)Check(SpecVersion.IdAttribute, value); return;
                    case "type": Type = (string)Check(SpecVersion.TypeAttribute, value); return;
                    case "source": Source = (Uri)Check(SpecVersion.SourceAttribute, value); return;
                    case "specversion": throw new ArgumentException("specversion cannot be set through the indexer");
                    case "datacontenttype": DataContentType = (string)Check(SpecVersion.DataContentTypeAttribute, value); return;
                    case "dataschema": DataSchema = (Uri)Check(SpecVersion.DataSchemaAttribute, value); return;
                    case "subject": Subject = (string)Check(SpecVersion.SubjectAttribute, value); return;
                    case "time": Time = value == null ? (DateTimeOffset?)null : (DateTimeOffset)Check(SpecVersion.TimeAttribute, value); return;
                }
                SetExtension(attributeName, value);
            }
        }

        /// <summary>Gets or sets an attribute by its attribute object.</summary>
        public object this[CloudEventAttribute attribute]
        {
            get
            {
                if (attribute == null) throw new ArgumentNullException("attribute");
                return this[attribute.Name];
            }
            set
            {
                if (attribute == null) throw new ArgumentNullException("attribute");
                if (attribute.IsExtension && GetAttribute(attribute.Name) == null)
                {
                    _extensionOrder.Add(attribute);
                    _extensionValues[attribute.Name] = null;
                }
                this[attribute.Name] = value;
            }
        }

        /// <summary>Sets an attribute from its string form (a new extension is a String).</summary>
        public void SetAttributeFromString(string name, string value)
        {
            if (name == null) throw new ArgumentNullException("name");
            if (value == null) throw new ArgumentNullException("value");
            var a = GetAttribute(name) ?? CloudEventAttribute.CreateExtension(name, CloudEventAttributeType.String);
            this[a] = a.Parse(value);
        }

        /// <summary>True when id, source and type are set (the attributes CloudEvents requires).</summary>
        public bool IsValid { get { return !string.IsNullOrEmpty(Id) && !string.IsNullOrEmpty(Type) && Source != null; } }

        /// <summary>This event if it is valid; otherwise InvalidOperationException naming what is missing.</summary>
        public CloudEvent Validate()
        {
            if (IsValid) return this;
            var missing = new List<string>();
            if (string.IsNullOrEmpty(Id)) missing.Add("id");
            if (Source == null) missing.Add("source");
            if (string.IsNullOrEmpty(Type)) missing.Add("type");
            throw new InvalidOperationException("the CloudEvent is missing required attributes: " + string.Join(", ", missing));
        }

        private static object Check(CloudEventAttribute a, object value)
        {
            if (value == null) return null;
            if (a.Type == CloudEventAttributeType.UriReference || a.Type == CloudEventAttributeType.Uri)
            {
                var s = value as string;
                if (s != null) value = new Uri(s, a.Type == CloudEventAttributeType.Uri ? UriKind.Absolute : UriKind.RelativeOrAbsolute);
            }
            if (a.Type == CloudEventAttributeType.Timestamp)
            {
                if (value is DateTime) value = new DateTimeOffset((DateTime)value);
                var s = value as string;
                if (s != null) value = a.Parse(s);
            }
            a.Validate(value);
            return value;
        }

        private void SetExtension(string name, object value)
        {
            CloudEventAttribute known = null;
            foreach (var a in _extensionOrder)
            {
                if (a.Name == name) { known = a; break; }
            }
            if (value == null)
            {
                if (known != null) _extensionValues[name] = null;
                return;
            }
            if (known == null)
            {
                known = CloudEventAttribute.CreateExtension(name, CloudEventAttributeType.Of(value));
                _extensionOrder.Add(known);
            }
            else if (!known.Type.ClrType.IsInstanceOfType(value) && value is string)
            {
                value = known.Parse((string)value);
            }
            known.Validate(value);
            _extensionValues[name] = value;
        }
    }
}
