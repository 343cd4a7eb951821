import Foundation
import Jobs
import Kernels
import MoCo

/// What a daemon admits: a spec is parsed strictly, its data paths resolved inside the data
/// roots, and its size held to limits that keep one job from taking the machine.
extension Scheduler {
    /// Parses and checks a spec the way a submission would, without creating anything.
    public func validate(_ body: Data) -> Result<JobSpec, SpecError> {
        let spec: JobSpec
        do { spec = try JobSpec.parse(body) } catch { return .failure(error) }
        var issues: [FieldIssue] = spec.machineIssues(bf16: Runtime.bf16)
        for (field, source) in [("data.path", spec.data)] + (spec.eval.map { [("eval.path", $0.source)] } ?? []) {
            do { _ = try DataSources.locate(source, roots: settings.dataRoots, allowAbsolute: false) } catch {
                issues.append(FieldIssue(field, error.message))
            }
        }
        // Limits that keep one job from taking the machine.
        if spec.optim.batch_size > 1024 { issues.append(FieldIssue("optim.batch_size", "must be at most 1024 on this daemon")) }
        if let moco = spec.moco, moco.queue > 262_144 { issues.append(FieldIssue("moco.queue", "must be at most 262144 on this daemon")) }
        if spec.augment.size > 256 { issues.append(FieldIssue("augment.size", "must be at most 256 on this daemon")) }
        if spec.optim.epochs > 1000 { issues.append(FieldIssue("optim.epochs", "must be at most 1000 on this daemon")) }
        if spec.distributed.processes > 1 {
            if let mpi = settings.mpi {
                let slots = mpi.hosts.reduce(0) { $0 + $1.slots }
                if spec.distributed.processes > slots {
                    issues.append(FieldIssue("distributed.processes", "must be at most \(slots), the MPI slots of this daemon's hostfile"))
                }
            } else {
                issues.append(FieldIssue("distributed.processes", "must be 1: this daemon runs no distributed jobs (start it with --mpi-hostfile)"))
            }
        }
        if spec.threads > settings.threads { issues.append(FieldIssue("threads", "must be at most \(settings.threads) (the daemon's thread budget)")) }
        let memory = Self.estimatedMemoryBytes(spec)
        let available = Self.physicalMemory()
        if Double(memory) > 0.8 * Double(available) {
            issues.append(FieldIssue("optim.batch_size", "the job needs about \(memory >> 20) MiB, more than 80% of the machine's \(available >> 20) MiB"))
        }
        return issues.isEmpty ? .success(spec) : .failure(SpecError(issues))
    }

    /// The job's expected peak memory (`JobSpec.memoryEstimate`, calibrated against measured peak RSS).
    public static func estimatedMemoryBytes(_ spec: JobSpec) -> Int { spec.memoryEstimate.total }

    static func physicalMemory() -> Int { Int(ProcessInfo.processInfo.physicalMemory) }
}
