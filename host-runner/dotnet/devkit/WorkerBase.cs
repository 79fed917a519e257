// Typed workers on top of IWorker: payload codecs, response building and error envelopes, as in
// the original Virtufin.Worker.DevKit (spec 5.4).
using System;
using System.Text.Json;
using System.Threading.Tasks;
using CloudNative.CloudEvents;

namespace Virtufin.Worker.DevKit
{
    /// <summary>Turns event payloads into typed inputs and typed outputs into payloads.</summary>
    public interface ICloudEventCodec<TInput, TOutput>
    {
        /// <summary>Content type of encoded responses.</summary>
        string ContentType { get; }
        /// <summary>Decodes the input event's payload.</summary>
        TInput DecodePayload(CloudEvent input);
        /// <summary>Encodes a response payload and names its content type.</summary>
        void EncodeResponse(TOutput output, out object data, out string contentType);
        /// <summary>Encodes an error envelope for a handler failure.</summary>
        object EncodeError(string message);
    }

    /// <summary>The default codec: JSON via System.Text.Json (property names case-insensitive on input).</summary>
    public sealed class JsonCloudEventCodec<TInput, TOutput> : ICloudEventCodec<TInput, TOutput>
    {
        // Fresh options per codec instance: options cache type metadata, and a process-wide
        // instance would keep a collectible worker's types alive after it is unloaded.
        private readonly JsonSerializerOptions _options = new JsonSerializerOptions { PropertyNameCaseInsensitive = true };

        /// <summary>application/json</summary>
        public string ContentType { get { return WorkerConstants.DataContentTypeJson; } }

        /// <summary>Deserializes the payload (string or UTF-8 bytes); default(TInput) for no payload.</summary>
        public TInput DecodePayload(CloudEvent input)
        {
            var bytes = input.DataAsBytes();
            if (bytes == null || bytes.Length == 0) return default(TInput);
            return JsonSerializer.Deserialize<TInput>(bytes, _options);
        }

        /// <summary>Serializes the output as a JSON string payload.</summary>
        public void EncodeResponse(TOutput output, out object data, out string contentType)
        {
            data = output == null ? "null" : JsonSerializer.Serialize(output, output.GetType(), _options);
            contentType = ContentType;
        }

        /// <summary><c>{"command":"error","success":false,"message":"..."}</c></summary>
        public object EncodeError(string message)
        {
            return WorkerConstants.ErrorJson(message);
        }
    }

    /// <summary>
    /// The untyped JSON codec: the payload as a <see cref="JsonElement"/> (a parse failure
    /// throws), any object out as JSON (a string is taken as JSON text already).
    /// </summary>
    public sealed class JsonCloudEventCodec : ICloudEventCodec<JsonElement, object>
    {
        /// <summary>application/json</summary>
        public string ContentType { get { return WorkerConstants.DataContentTypeJson; } }

        /// <summary>Parses the payload; an empty or malformed payload throws JsonException.</summary>
        public JsonElement DecodePayload(CloudEvent input)
        {
            var bytes = input.DataAsBytes() ?? new byte[0];
            using (var doc = JsonDocument.Parse(bytes))
            {
                return doc.RootElement.Clone();
            }
        }

        /// <summary>A string is JSON text as is; a JsonElement its raw text; anything else serialized.</summary>
        public void EncodeResponse(object output, out object data, out string contentType)
        {
            contentType = ContentType;
            if (output == null) { data = "null"; return; }
            var raw = output as RawJson;
            if (raw != null) { data = raw.Json; return; }
            var s = output as string;
            if (s != null) { data = s; return; }
            if (output is JsonElement) { data = ((JsonElement)output).GetRawText(); return; }
            data = UnloadableJson.Serialize(output);
        }

        /// <summary><c>{"command":"error","success":false,"message":"..."}</c></summary>
        public object EncodeError(string message)
        {
            return WorkerConstants.ErrorJson(message);
        }
    }

    /// <summary>JSON text a handler already built (what Response and ErrorPayload return).</summary>
    internal sealed class RawJson
    {
        public readonly string Json;
        public RawJson(string json) { Json = json; }
        public override string ToString() { return Json; }
    }

    /// <summary>
    /// JSON for objects of any type without rooting a collectible worker's types: System.Text.Json
    /// caches type metadata in the options object, so a worker's own types get a fresh options
    /// object (garbage with the worker) instead of the process-wide default.
    /// </summary>
    internal static class UnloadableJson
    {
        public static string Serialize(object value)
        {
            var raw = value as RawJson;
            if (raw != null) return raw.Json;
            var t = value.GetType();
            return t.Assembly.IsCollectible ? JsonSerializer.Serialize(value, t, new JsonSerializerOptions()) : JsonSerializer.Serialize(value, t);
        }

        public static byte[] SerializeToUtf8Bytes(object value)
        {
            var raw = value as RawJson;
            if (raw != null) return System.Text.Encoding.UTF8.GetBytes(raw.Json);
            var t = value.GetType();
            return t.Assembly.IsCollectible ? JsonSerializer.SerializeToUtf8Bytes(value, t, new JsonSerializerOptions()) : JsonSerializer.SerializeToUtf8Bytes(value, t);
        }
    }

    /// <summary>Attribute names, content types and error texts shared by the worker base classes.</summary>
    public static class WorkerConstants
    {
        /// <summary>Extension copied from request to response.</summary>
        public const string CorrelationIdAttribute = "correlationid";
        /// <summary>Extension naming the topic a reply goes to.</summary>
        public const string ReplyTopicAttribute = "replytopic";
        /// <summary>Error field name.</summary>
        public const string FieldError = "error";
        /// <summary>application/json</summary>
        public const string DataContentTypeJson = "application/json";
        /// <summary>The command field of the JSON command pattern.</summary>
        public const string FieldCommand = "command";
        /// <summary>Error text: the payload is not JSON.</summary>
        public const string ErrorFailedToParse = "Failed to parse command JSON";
        /// <summary>Error text: no string "command" field.</summary>
        public const string ErrorMissingCommand = "Missing 'command' field";
        /// <summary>Error text prefix: the command is not a value of the enum (followed by the command).</summary>
        public const string ErrorUnknownCommandPrefix = "Unknown command: ";
        /// <summary>Error text prefix: the handler threw (followed by the exception's message).</summary>
        public const string ErrorInternalPrefix = "Internal error: ";

        internal static string ErrorJson(string message)
        {
            return "{\"command\":\"error\",\"success\":false,\"message\":" + JsonSerializer.Serialize(message ?? string.Empty) + "}";
        }
    }

    /// <summary>
    /// A typed worker: decodes the payload with a codec, calls <see cref="ProcessAsync(CloudEvent, TInput)"/>
    /// and builds the response event; a handler exception becomes an error envelope reply.
    /// </summary>
    public abstract class WorkerBase<TInput, TOutput> : IWorker
    {
        /// <summary>See <see cref="WorkerConstants.CorrelationIdAttribute"/>.</summary>
        public const string CorrelationIdAttribute = WorkerConstants.CorrelationIdAttribute;
        /// <summary>See <see cref="WorkerConstants.ReplyTopicAttribute"/>.</summary>
        public const string ReplyTopicAttribute = WorkerConstants.ReplyTopicAttribute;
        /// <summary>See <see cref="WorkerConstants.FieldError"/>.</summary>
        public const string FieldError = WorkerConstants.FieldError;
        /// <summary>See <see cref="WorkerConstants.DataContentTypeJson"/>.</summary>
        public const string DataContentTypeJson = WorkerConstants.DataContentTypeJson;

        /// <summary>Source of response events.</summary>
        protected Uri Source { get; private set; }
        /// <summary>Type of response events.</summary>
        protected string ResponseEventType { get; private set; }
        /// <summary>The payload codec.</summary>
        protected ICloudEventCodec<TInput, TOutput> Codec { get; private set; }

        /// <summary>Creates the worker; a null codec means JSON.</summary>
        protected WorkerBase(Uri source, string responseEventType, ICloudEventCodec<TInput, TOutput> codec = null)
        {
            if (source == null) throw new ArgumentNullException("source");
            if (responseEventType == null) throw new ArgumentNullException("responseEventType");
            Source = source;
            ResponseEventType = responseEventType;
            Codec = codec ?? DefaultCodec();
        }

        private static ICloudEventCodec<TInput, TOutput> DefaultCodec()
        {
            if (typeof(TInput) == typeof(JsonElement) && typeof(TOutput) == typeof(object))
                return (ICloudEventCodec<TInput, TOutput>)(object)new JsonCloudEventCodec();
            return new JsonCloudEventCodec<TInput, TOutput>();
        }

        /// <summary>Handles one typed input; default(TOutput) (null) means no reply.</summary>
        protected abstract Task<TOutput> ProcessAsync(CloudEvent input, TInput payload);

        /// <summary>IWorker entry: decode, handle, encode; handler failures become an error envelope.</summary>
        public virtual async Task<CloudEvent> ProcessAsync(CloudEvent input)
        {
            TOutput output;
            try
            {
                TInput payload = Codec.DecodePayload(input);
                output = await ProcessAsync(input, payload).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                return ErrorResponse(input, e.Message);
            }
            return Respond(input, output);
        }

        /// <summary>The reply for a handler's output: null for no reply, else the encoded output.</summary>
        protected CloudEvent Respond(CloudEvent input, TOutput output)
        {
            if (output == null) return null;
            object data;
            string contentType;
            Codec.EncodeResponse(output, out data, out contentType);
            return BuildResponse(input, data, contentType);
        }

        /// <summary>A reply carrying the codec's error envelope for <paramref name="message"/>.</summary>
        protected CloudEvent ErrorResponse(CloudEvent input, string message)
        {
            return BuildResponse(input, Codec.EncodeError(message), Codec.ContentType);
        }

        /// <summary>
        /// A response to <paramref name="input"/>: new id, this worker's source and response type,
        /// the current time, and the input's correlationid copied over.
        /// </summary>
        protected CloudEvent BuildResponse(CloudEvent input, object data, string contentType)
        {
            var ev = new CloudEvent(CloudEventsSpecVersion.V1_0)
            {
                Id = Guid.NewGuid().ToString(),
                Source = Source,
                Type = ResponseEventType,
                Time = DateTimeOffset.UtcNow,
                DataContentType = contentType,
                Data = data is RawJson ? ((RawJson)data).Json : data,
            };
            var correlation = input == null ? null : input[CorrelationIdAttribute];
            if (correlation != null) ev[CorrelationIdAttribute] = correlation;
            return ev;
        }
    }
}
