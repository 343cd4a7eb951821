// swift-tools-version: 6.1
import Foundation
import PackageDescription

// Layers point one way: CDNNL/COpenBLAS → Kernels → Autograd (Tensor, tape, ops) → NN → (MoCo, Daemon, ...).
// Kernels is the only module that touches oneDNN or BLAS pointers.
let package = Package(
    name: "mocod",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Kernels", targets: ["Kernels"]),
        .library(name: "Autograd", targets: ["Autograd"]),
        .library(name: "NN", targets: ["NN"]),
        .library(name: "Data", targets: ["Data"]),
        .library(name: "MoCo", targets: ["MoCo"]),
        .library(name: "HTTP", targets: ["HTTP"]),
        .executable(name: "moco", targets: ["moco"]),
        .executable(name: "mocod", targets: ["mocod"]),
        .executable(name: "mocobench", targets: ["mocobench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/groue/GRDB.swift", exact: "7.10.0"),
    ],
    targets: [
        .systemLibrary(name: "CDNNL", path: "Sources/CDNNL"),
        .systemLibrary(name: "COpenBLAS", path: "Sources/COpenBLAS"),
        .systemLibrary(name: "CZlib", path: "Sources/CZlib"),
        .systemLibrary(name: "CPNG", path: "Sources/CPNG"),
        .systemLibrary(name: "CTurboJPEG", path: "Sources/CTurboJPEG"),
        .systemLibrary(name: "CCrypto", path: "Sources/CCrypto"),
        // Open MPI: the distributed engine (Debian's default MPI; what mpiexec, Slurm and the
        // Kubernetes MPI operator launch). Paths come from pkg-config's ompi-c.
        .systemLibrary(name: "CMPI", path: "Sources/CMPI", pkgConfig: "ompi-c"),
        .target(name: "Kernels", dependencies: ["CDNNL", "COpenBLAS"]),
        .target(name: "Autograd", dependencies: ["Kernels"]),
        // Collectives: MPI's communicator and the collectives data-parallel training needs.
        .target(name: "Collectives", dependencies: ["CMPI"]),
        .target(name: "NN", dependencies: ["Autograd", "Kernels"]),
        .target(name: "Data", dependencies: ["CZlib", "CPNG", "CTurboJPEG", "Autograd", "Kernels"]),
        .target(name: "MoCo", dependencies: ["Data", "NN", "Autograd", "Kernels", "CCrypto", "Collectives"]),
        // The HTTP/1.1 server imports nothing ML.
        .target(name: "HTTP", dependencies: [.product(name: "Logging", package: "swift-log")]),
        // Jobs: the job model, its state machine and the SQLite store; nothing ML either.
        .target(name: "Jobs", dependencies: [.product(name: "GRDB", package: "GRDB.swift")]),
        // Daemon: the API handlers joining HTTP, Jobs and MoCo.
        // Worker: one job's process (the trainer's shell) and its protocol to the daemon.
        .target(name: "CProcess"),
        .target(name: "Worker", dependencies: ["MoCo", "Data", "Kernels", "NN", "Collectives", "CProcess"]),
        // The dashboard's page, script and style are compiled into the binary (`PackageResources`).
        .target(name: "Daemon", dependencies: ["HTTP", "Jobs", "MoCo", "Autograd", "Worker", "CProcess", "Data", "NN", "Kernels",
                                               .product(name: "Logging", package: "swift-log")],
                resources: [.embedInCode("Dashboard/index.html"), .embedInCode("Dashboard/app.js"), .embedInCode("Dashboard/app.css")]),
        .executableTarget(name: "mocod", dependencies: ["Daemon", "Worker", "HTTP", "Jobs", "Kernels",
                                                        .product(name: "Logging", package: "swift-log"),
                                                        .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(
            name: "moco",
            dependencies: ["MoCo", "Data", "NN", "Autograd", "Kernels", "Collectives",
                           .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(
            name: "mocobench",
            dependencies: ["MoCo", "NN", "Autograd", "Kernels", "HTTP", "Collectives", .product(name: "Logging", package: "swift-log"),
                           .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .target(name: "TestSupport", dependencies: ["Autograd", "NN", "Kernels"], path: "Tests/TestSupport"),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels", "TestSupport"]),
        .testTarget(name: "AutogradTests", dependencies: ["Autograd", "Kernels", "TestSupport"]),
        .testTarget(name: "NNTests", dependencies: ["NN", "Autograd", "Kernels", "TestSupport"]),
        .testTarget(name: "DataTests", dependencies: ["Data", "Autograd", "MoCo", "TestSupport"]),
        .testTarget(name: "HTTPTests", dependencies: ["HTTP"]),
        .testTarget(name: "DaemonTests", dependencies: ["Daemon", "Worker", "HTTP", "Jobs", "Data", "NN", "MoCo", "Kernels", .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "CollectivesTests", dependencies: ["Collectives", "TestSupport"]),
        .testTarget(name: "JobsTests", dependencies: ["Jobs", .product(name: "GRDB", package: "GRDB.swift")]),
        .testTarget(name: "MoCoTests", dependencies: ["MoCo", "Data", "NN", "Autograd", "Kernels", "TestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)

// The libFuzzer target of the HTTP parser exists only for fuzzing builds (libFuzzer supplies
// `main`): MOCOD_FUZZ=1 swift build -c release --sanitize=fuzzer --product HTTPParserFuzz
if ProcessInfo.processInfo.environment["MOCOD_FUZZ"] != nil {
    package.products.append(.executable(name: "HTTPParserFuzz", targets: ["HTTPParserFuzz"]))
    package.targets.append(.executableTarget(name: "HTTPParserFuzz", dependencies: ["HTTP"]))
}
