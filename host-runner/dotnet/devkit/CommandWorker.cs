// The command pattern of the original DevKit: a payload names a command of an enum, the worker
// handles it, and every failure has a documented error text (spec 5.4).
using System;
using System.Text;
using System.Text.Json;
using System.Threading.Tasks;
using CloudNative.CloudEvents;

namespace Virtufin.Worker.DevKit
{
    /// <summary>
    /// A command worker over any codec: <see cref="GetCommandName"/> reads the command out of the
    /// decoded payload, which is parsed case-insensitively into <typeparamref name="TCommand"/>;
    /// <see cref="HandleCommandAsync"/> returns the reply payload (null = no reply). Errors are
    /// replies with the codec's error envelope: <c>Failed to parse command JSON</c>,
    /// <c>Missing 'command' field</c>, <c>Unknown command: &lt;command&gt;</c>,
    /// <c>Internal error: &lt;message&gt;</c>.
    /// </summary>
    public abstract class CommandWorker<TInput, TOutput, TCommand> : WorkerBase<TInput, TOutput> where TCommand : struct
    {
        /// <summary>Creates the worker; a null codec means JSON.</summary>
        protected CommandWorker(Uri source, string responseEventType, ICloudEventCodec<TInput, TOutput> codec = null)
            : base(source, responseEventType, codec) { }

        /// <summary>The command named by a decoded payload, or null when it names none.</summary>
        protected abstract string GetCommandName(TInput payload);

        /// <summary>Handles one command; returns the reply payload, or null for no reply.</summary>
        protected abstract Task<TOutput> HandleCommandAsync(CloudEvent input, TCommand command, TInput payload);

        /// <summary>Routes to <see cref="HandleCommandAsync"/> (used when called as a WorkerBase).</summary>
        protected sealed override Task<TOutput> ProcessAsync(CloudEvent input, TInput payload)
        {
            TCommand command;
            string error = ParseCommand(payload, out command);
            if (error != null) throw new InvalidOperationException(error);
            return HandleCommandAsync(input, command, payload);
        }

        /// <summary>IWorker entry: decode, find the command, handle; every failure is an error reply.</summary>
        public override async Task<CloudEvent> ProcessAsync(CloudEvent input)
        {
            TInput payload;
            try
            {
                payload = Codec.DecodePayload(input);
            }
            catch (Exception)
            {
                return ErrorResponse(input, WorkerConstants.ErrorFailedToParse);
            }
            TCommand command;
            string error;
            try
            {
                error = ParseCommand(payload, out command);
            }
            catch (Exception)
            {
                return ErrorResponse(input, WorkerConstants.ErrorFailedToParse);
            }
            if (error != null) return ErrorResponse(input, error);
            TOutput output;
            try
            {
                output = await HandleCommandAsync(input, command, payload).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                return ErrorResponse(input, WorkerConstants.ErrorInternalPrefix + e.Message);
            }
            return Respond(input, output);
        }

        private string ParseCommand(TInput payload, out TCommand command)
        {
            command = default(TCommand);
            string name = GetCommandName(payload);
            if (name == null) return WorkerConstants.ErrorMissingCommand;
            if (!Enum.TryParse<TCommand>(name, true, out command) || !Enum.IsDefined(typeof(TCommand), command)
                || IsNumber(name))
                return WorkerConstants.ErrorUnknownCommandPrefix + name;
            return null;
        }

        private static bool IsNumber(string s)
        {
            s = s.Trim();
            if (s.Length == 0) return false;
            char c = s[0];
            return char.IsDigit(c) || c == '-' || c == '+';
        }
    }

    /// <summary>
    /// The JSON command worker: payload <c>{"command":"&lt;name&gt;", ...}</c>, the command parsed
    /// case-insensitively into <typeparamref name="TCommand"/> (an enum); the handler gets the
    /// payload's root element and returns a payload (any object, serialized as JSON; see
    /// <see cref="Response"/>) or null for no reply.
    /// </summary>
    public abstract class CommandWorker<TCommand> : CommandWorker<JsonElement, object, TCommand> where TCommand : struct
    {
        /// <summary>Creates the worker (JSON codec).</summary>
        protected CommandWorker(Uri source, string responseEventType) : base(source, responseEventType, new JsonCloudEventCodec()) { }

        /// <summary>The string <c>command</c> field of a JSON object payload, or null.</summary>
        protected override string GetCommandName(JsonElement payload)
        {
            JsonElement c;
            if (payload.ValueKind != JsonValueKind.Object || !payload.TryGetProperty(WorkerConstants.FieldCommand, out c)
                || c.ValueKind != JsonValueKind.String)
                return null;
            return c.GetString();
        }

        /// <summary>The reply payload <c>{command, success, id?, message?}</c>.</summary>
        protected static object Response(CloudEvent input, string command, bool success, string id = null, string message = null)
        {
            var sb = new StringBuilder();
            sb.Append("{\"command\":").Append(JsonSerializer.Serialize(command ?? string.Empty)).Append(",\"success\":").Append(success ? "true" : "false");
            if (id != null) sb.Append(",\"id\":").Append(JsonSerializer.Serialize(id));
            if (message != null) sb.Append(",\"message\":").Append(JsonSerializer.Serialize(message));
            sb.Append('}');
            return new RawJson(sb.ToString());
        }

        /// <summary>The error envelope <c>{"command":"error","success":false,"message":...}</c>.</summary>
        protected static object ErrorPayload(string message)
        {
            return new RawJson(WorkerConstants.ErrorJson(message));
        }
    }
}
