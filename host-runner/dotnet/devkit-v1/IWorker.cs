// Virtufin.Worker.DevKit: the contract every managed worker implements.
using System.Threading.Tasks;

namespace Virtufin.Worker.DevKit
{
    /// <summary>
    /// A worker: one instance is created (parameterless constructor) when the worker is loaded and
    /// kept across calls, so fields hold state between messages.
    /// </summary>
    public interface IWorker
    {
        /// <summary>Handles one event. A null result (or a task of null) means "no reply".</summary>
        Task<CloudEvent> ProcessAsync(CloudEvent input);
    }
}
