// .NET Core 3.1's cryptography on Linux goes through System.Security.Cryptography.Native.OpenSsl,
// which needs OpenSSL 1.x. Where there is none (Debian 12 ships only OpenSSL 3), that shim calls
// abort() on first use: one worker hashing a string would take down its whole host and every
// worker in it. This guard answers the shim's load with a DllNotFoundException instead, so the
// worker gets an exception (a worker error for that call) and the host lives on. Where OpenSSL
// 1.x is present, or CLR_OPENSSL_VERSION_OVERRIDE is set, it does nothing.
// Known cost: a worker that hit it stays in memory after it is unloaded (the runtime keeps the
// failed type initializer's exception, whose stack trace refers to the worker's code).
using System;
using System.Reflection;
using System.Runtime.InteropServices;

namespace Virtufin.WorkManager.Engine.DotNetDll
{
    internal static class OpenSslGuard
    {
        private const string Shim = "System.Security.Cryptography.Native.OpenSsl";
        private static readonly string[] Libssl = { "libssl.so.1.1", "libssl.so.1.0.2", "libssl.so.1.0.0", "libssl.so.10" };
        private static bool s_missing;

        /// <summary>Installs the guard if no OpenSSL 1.x can be loaded (call once, at Init).</summary>
        public static void Install()
        {
            if (Environment.GetEnvironmentVariable("CLR_OPENSSL_VERSION_OVERRIDE") != null) return;
            foreach (var name in Libssl)
            {
                IntPtr h;
                if (NativeLibrary.TryLoad(name, out h))
                {
                    NativeLibrary.Free(h);
                    return;
                }
            }
            s_missing = true;
            AppDomain.CurrentDomain.AssemblyLoad += (sender, e) => Guard(e.LoadedAssembly);
            foreach (var a in AppDomain.CurrentDomain.GetAssemblies()) Guard(a);
        }

        private static void Guard(Assembly a)
        {
            if (!s_missing || a.IsDynamic) return;
            var name = a.GetName().Name;
            // The framework assemblies that P/Invoke into the OpenSSL shim.
            if (name == null || !(name.StartsWith("System.Security.Cryptography.", StringComparison.Ordinal)
                || name == "System.Net.Security" || name == "System.Net.Http")) return;
            try
            {
                NativeLibrary.SetDllImportResolver(a, Resolve);
            }
            catch (InvalidOperationException)
            {
                // A resolver is already set for it (by a worker): leave that one.
            }
        }

        private static IntPtr Resolve(string library, Assembly caller, DllImportSearchPath? paths)
        {
            if (library != Shim) return IntPtr.Zero;
            throw new DllNotFoundException("cryptography is unavailable in this host: .NET Core 3.1 needs OpenSSL 1.x (libssl.so.1.1), which this machine "
                + "lacks (its shim would abort the whole host). Run the host on .NET 5 or newer (OpenSSL 3), or install OpenSSL 1.1.");
        }
    }
}
