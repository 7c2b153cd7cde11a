// Test classes are independent (each builds its own sessions), so methods run in parallel on the two cores.
[assembly: Parallelize(Workers = 2, Scope = ExecutionScope.MethodLevel)]
