// Workers that call the platform's API. The original's ApiClient spoke gRPC to an API gateway at
// api_host:5002; here a worker has no network (the sandbox), so the client sends the same calls
// through gateway_call, which the supervisor serves or forwards (docs/dotnet.md).
using System;
using System.Text.Json;
using System.Threading.Tasks;
using CloudNative.CloudEvents;

namespace Virtufin.Worker.DevKit
{
    /// <summary>A client for the API gateway; every call is a gateway_call of the current message.</summary>
    public sealed class ApiClient
    {
        /// <summary>A client for the gateway the original would reach at host:port.</summary>
        public ApiClient(string host, int port)
        {
            Host = host;
            Port = port;
        }

        /// <summary>The API host the worker named (informational: calls go through gateway_call).</summary>
        public string Host { get; private set; }
        /// <summary>The API port the worker named (informational).</summary>
        public int Port { get; private set; }

        /// <summary>Calls <paramref name="service"/>.<paramref name="method"/> with a JSON request; returns the JSON response.</summary>
        public string Call(string service, string method, string requestJson)
        {
            return Context().InvokeGateway(service, method, requestJson);
        }

        /// <summary>Calls with raw bytes.</summary>
        public byte[] Call(string service, string method, byte[] request)
        {
            return Context().InvokeGateway(service, method, request);
        }

        /// <summary>The asynchronous form of <see cref="Call(string, string, string)"/> (the call itself is synchronous).</summary>
        public Task<string> CallAsync(string service, string method, string requestJson)
        {
            try
            {
                return Task.FromResult(Call(service, method, requestJson));
            }
            catch (Exception e)
            {
                return Task.FromException<string>(e);
            }
        }

        private static WorkerContext Context()
        {
            var ctx = WorkerContext.Current;
            if (ctx == null)
                throw new InvalidOperationException("API calls are possible only while the worker handles a message (WorkerContext.Current is null)");
            return ctx;
        }
    }

    /// <summary>A worker with an API client.</summary>
    public abstract class ApiWorker : IWorker
    {
        /// <summary>The command field naming the API host.</summary>
        public const string FieldApiHost = "api_host";
        /// <summary>The original gateway's default port.</summary>
        public const int DefaultApiPort = 5002;

        /// <summary>The client, once <see cref="EnsureClient"/> made it.</summary>
        protected ApiClient Api { get; private set; }

        /// <summary>The client for host:port (made once, replaced when either changes).</summary>
        protected ApiClient EnsureClient(string host, int port = DefaultApiPort)
        {
            var c = Api;
            if (c == null || c.Host != host || c.Port != port) Api = c = new ApiClient(host, port);
            return c;
        }

        /// <summary>Handles one event.</summary>
        public abstract Task<CloudEvent> ProcessAsync(CloudEvent input);
    }

    /// <summary>A JSON command worker with an API client (see <see cref="ApiWorker"/>).</summary>
    public abstract class ApiCommandWorker<TCommand> : CommandWorker<TCommand> where TCommand : struct
    {
        /// <summary>The command field naming the API host.</summary>
        public const string FieldApiHost = ApiWorker.FieldApiHost;
        /// <summary>The original gateway's default port.</summary>
        public const int DefaultApiPort = ApiWorker.DefaultApiPort;

        /// <summary>Creates the worker.</summary>
        protected ApiCommandWorker(Uri source, string responseEventType) : base(source, responseEventType) { }

        /// <summary>The client, once made.</summary>
        protected ApiClient Api { get; private set; }

        /// <summary>The client for host:port (made once, replaced when either changes).</summary>
        protected ApiClient EnsureClient(string host, int port = DefaultApiPort)
        {
            var c = Api;
            if (c == null || c.Host != host || c.Port != port) Api = c = new ApiClient(host, port);
            return c;
        }

        /// <summary>The client for the command's <c>api_host</c> (and <c>api_port</c>, default 5002); host "localhost" if absent.</summary>
        protected ApiClient EnsureClientFromCommand(JsonElement node)
        {
            string host = "localhost";
            int port = DefaultApiPort;
            JsonElement v;
            if (node.ValueKind == JsonValueKind.Object)
            {
                if (node.TryGetProperty(FieldApiHost, out v) && v.ValueKind == JsonValueKind.String) host = v.GetString();
                if (node.TryGetProperty("api_port", out v) && v.ValueKind == JsonValueKind.Number) v.TryGetInt32(out port);
            }
            return EnsureClient(host, port);
        }
    }
}
