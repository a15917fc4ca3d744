import XCTest
import StreamOtterCore
@testable import StreamOtterSecurity

final class ChannelPermissionsTests: XCTestCase {
    let config = """
    # roles from Keycloak-style claims
    claim realm_access.roles
    role admin: all on *
    role reader: subscribe on orders.*, prices   # two patterns
    role reader: replay on orders.eu.*
    role writer: publish, subscribe on orders.eu
    role user: subscribe, publish on user.{sub}.inbox
    role user: subscribe on user.{sub}.*
    role *: subscribe on public.*
    """

    func testParseAndRoles() throws {
        let p = try ChannelPermissions(parsing: config)
        XCTAssertEqual(p.claimPath, ["realm_access", "roles"])
        let claims = try JSON.parse(#"{"sub":"alice","realm_access":{"roles":["reader","user",7]}}"#)
        let id = p.identity(from: claims)
        XCTAssertEqual(id, SecurityIdentity(subject: "alice", roles: ["reader", "user"]))
        var flat = ChannelPermissions(claimPath: "roles")
        flat.add(role: "x", permissions: [.publish], pattern: "a")
        XCTAssertEqual(flat.roles(from: try JSON.parse(#"{"roles":"x y,z"}"#)), ["x", "y", "z"])
        XCTAssertEqual(flat.roles(from: try JSON.parse(#"{"roles":{"a":1}}"#)), [])
        XCTAssertEqual(flat.roles(from: try JSON.parse(#"{}"#)), [])
    }

    func testAllowAndDeny() throws {
        let p = try ChannelPermissions(parsing: config)
        let reader = SecurityIdentity(subject: "bob", roles: ["reader"])
        XCTAssertTrue(p.allows(.subscribe, channel: "orders.eu", identity: reader))
        XCTAssertTrue(p.allows(.subscribe, channel: "orders.eu.fr", identity: reader))
        XCTAssertFalse(p.allows(.subscribe, channel: "orders", identity: reader))       // prefix needs more
        XCTAssertFalse(p.allows(.subscribe, channel: "ordersx", identity: reader))
        XCTAssertTrue(p.allows(.subscribe, channel: "prices", identity: reader))
        XCTAssertFalse(p.allows(.subscribe, channel: "prices.x", identity: reader))     // exact
        XCTAssertFalse(p.allows(.publish, channel: "orders.eu", identity: reader))
        XCTAssertFalse(p.allows(.replay, channel: "orders.us", identity: reader))
        XCTAssertTrue(p.allows(.replay, channel: "orders.eu.fr", identity: reader))
        XCTAssertTrue(p.allows(.subscribe, channel: "public.news", identity: reader))   // role *
        let writer = SecurityIdentity(subject: "w", roles: ["writer"])
        XCTAssertTrue(p.allows(.publish, channel: "orders.eu", identity: writer))
        XCTAssertFalse(p.allows(.publish, channel: "orders.eu.fr", identity: writer))
        let admin = SecurityIdentity(subject: "root", roles: ["admin"])
        for perm in ChannelPermission.allCases { XCTAssertTrue(p.allows(perm, channel: "anything", identity: admin)) }
        let nobody = SecurityIdentity(subject: "n", roles: [])
        XCTAssertFalse(p.allows(.subscribe, channel: "orders.eu", identity: nobody))
        XCTAssertTrue(p.allows(.subscribe, channel: "public.x", identity: nobody))
        XCTAssertFalse(p.allows(.publish, channel: "public.x", identity: nobody))
        // Unknown role names and a role literally called "*" in the token grant nothing extra.
        XCTAssertFalse(p.allows(.publish, channel: "orders.eu", identity: SecurityIdentity(subject: "x", roles: ["*", "ghost"])))
    }

    func testSubPlaceholder() throws {
        let p = try ChannelPermissions(parsing: config)
        let alice = SecurityIdentity(subject: "alice", roles: ["user"])
        XCTAssertTrue(p.allows(.publish, channel: "user.alice.inbox", identity: alice))
        XCTAssertTrue(p.allows(.subscribe, channel: "user.alice.inbox", identity: alice))
        XCTAssertTrue(p.allows(.subscribe, channel: "user.alice.feed", identity: alice))
        XCTAssertFalse(p.allows(.publish, channel: "user.bob.inbox", identity: alice))
        XCTAssertFalse(p.allows(.subscribe, channel: "user.bob.feed", identity: alice))
        XCTAssertFalse(p.allows(.subscribe, channel: "user.alice", identity: alice))
        // Subjects that could escape their own sub-tree never match {sub}.
        for evil in ["", "bob.inbox", "*", "a.b", "{sub}", "x y", "../bob"] {
            let id = SecurityIdentity(subject: evil, roles: ["user"])
            XCTAssertFalse(p.allows(.publish, channel: "user.\(evil).inbox", identity: id), evil)
            XCTAssertFalse(p.allows(.publish, channel: "user.bob.inbox", identity: id), evil)
        }
        XCTAssertTrue(p.allows(.publish, channel: "user.Dev-42_x.inbox", identity: SecurityIdentity(subject: "Dev-42_x", roles: ["user"])))
    }

    func testParseErrors() {
        for bad in ["role admin publish on *", "role admin: fly on *", "role admin: publish *", "role admin: publish on ",
                    "role admin: publish on a*b", "role admin: publish on *.x", "role admin: publish on {user}.x",
                    "grant admin", "role : publish on x", "role a: on x", "claim "] {
            XCTAssertThrowsError(try ChannelPermissions(parsing: bad), bad) { error in
                XCTAssertTrue("\(error)".contains("line 1"), "\(error)")
            }
        }
    }
}

final class LimitsTests: XCTestCase {
    func testRateLimiterMessages() {
        var r = RateLimiter(messagesPerSecond: 10, bytesPerSecond: 0, messageBurst: 5, now: 0)
        for _ in 0..<5 { XCTAssertEqual(r.consume(bytes: 100, now: 0), .allowed) }
        guard case .limited(let wait) = r.consume(bytes: 1, now: 0) else { return XCTFail() }
        XCTAssertEqual(wait, 100_000_000)
        XCTAssertEqual(r.consume(bytes: 1, now: 50_000_000), .limited(retryAfterNanos: 50_000_000))
        XCTAssertEqual(r.consume(bytes: 1, now: 100_000_000), .allowed)
        // Refill caps at the burst.
        for _ in 0..<5 { XCTAssertEqual(r.consume(bytes: 1, now: 10_000_000_000), .allowed) }
        XCTAssertNotEqual(r.consume(bytes: 1, now: 10_000_000_000), .allowed)
    }

    func testRateLimiterBytes() {
        var r = RateLimiter(messagesPerSecond: 0, bytesPerSecond: 1000, now: 0)
        XCTAssertEqual(r.consume(bytes: 600, now: 0), .allowed)
        XCTAssertEqual(r.consume(bytes: 600, now: 0), .limited(retryAfterNanos: 200_000_000))
        XCTAssertEqual(r.consume(bytes: 600, now: 200_000_000), .allowed)
        // A message bigger than the burst passes on a full bucket and the debt is paid later.
        var big = RateLimiter(messagesPerSecond: 0, bytesPerSecond: 1000, now: 0)
        XCTAssertEqual(big.consume(bytes: 5000, now: 0), .allowed)
        XCTAssertNotEqual(big.consume(bytes: 1, now: 1_000_000_000), .allowed)
        XCTAssertEqual(big.consume(bytes: 1, now: 4_100_000_000), .allowed)
        // Unlimited.
        var none = RateLimiter(messagesPerSecond: 0, bytesPerSecond: 0, now: 0)
        for _ in 0..<10_000 { XCTAssertEqual(none.consume(bytes: 1 << 20, now: 0), .allowed) }
    }

    func testRateLimiterWaitsBeyondUInt64Saturate() {
        // Rates so low that the wait does not fit a UInt64 of nanoseconds (it trapped).
        var slow = RateLimiter(messagesPerSecond: 1e-12, bytesPerSecond: 0, messageBurst: 1, now: 0)
        XCTAssertEqual(slow.consume(bytes: 1, now: 0), .allowed)
        XCTAssertEqual(slow.consume(bytes: 1, now: 0), .limited(retryAfterNanos: .max))
        var thin = RateLimiter(messagesPerSecond: 0, bytesPerSecond: 1e-6, now: 0)
        XCTAssertEqual(thin.consume(bytes: 1 << 20, now: 0), .allowed)
        XCTAssertEqual(thin.consume(bytes: 1, now: 1_000_000_000), .limited(retryAfterNanos: .max))
        XCTAssertEqual(RateLimiter.nanos(.nan), .max)
        XCTAssertEqual(RateLimiter.nanos(0.25), 250_000_000)
    }

    func testConnectionLimits() {
        let l = ConnectionLimits(maxTotal: 5, maxPerAddress: 2)
        XCTAssertEqual(l.acquire(address: "10.0.0.1"), .accepted)
        XCTAssertEqual(l.acquire(address: "::ffff:10.0.0.1"), .accepted)
        XCTAssertEqual(l.acquire(address: "10.0.0.1"), .perAddressLimitReached)
        XCTAssertEqual(l.acquire(address: "10.0.0.2"), .accepted)
        XCTAssertEqual(l.acquire(address: "[2001:DB8::1]"), .accepted)
        XCTAssertEqual(l.count(address: "2001:db8::1"), 1)
        XCTAssertEqual(l.acquire(address: "10.0.0.3"), .accepted)
        XCTAssertEqual(l.acquire(address: "10.0.0.4"), .totalLimitReached)
        XCTAssertEqual(ConnectionLimits.Decision.totalLimitReached.reason, "too_many_connections")
        l.release(address: "10.0.0.1")
        XCTAssertEqual(l.totalCount, 4)
        XCTAssertEqual(l.acquire(address: "10.0.0.1"), .accepted)
        l.release(address: "never-acquired")
        XCTAssertEqual(l.totalCount, 5)
        // Concurrent acquire/release balance out.
        let u = ConnectionLimits(maxTotal: 0, maxPerAddress: 0)
        DispatchQueue.concurrentPerform(iterations: 1000) { i in
            XCTAssertEqual(u.acquire(address: "h\(i % 7)"), .accepted)
            u.release(address: "h\(i % 7)")
        }
        XCTAssertEqual(u.totalCount, 0)
    }
}
