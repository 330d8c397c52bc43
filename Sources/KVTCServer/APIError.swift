import Foundation
import Hummingbird
import Logging

/// An error answered with an HTTP status and an OpenAI-style JSON body.
public struct APIError: HTTPResponseError, Sendable, Equatable {
    public var status: HTTPResponse.Status
    public var message: String
    public var type: String
    /// OpenAI's error code (`model_not_found`, ...); the status code when it has none.
    public var code: String?
    /// Extra response headers (`Retry-After`, `WWW-Authenticate`).
    public var headers: HTTPFields

    public init(_ status: HTTPResponse.Status, _ message: String, type: String? = nil, code: String? = nil,
                headers: HTTPFields = [:]) {
        self.status = status
        self.message = message
        self.type = type ?? Self.type(for: status.code)
        self.code = code
        self.headers = headers
    }

    /// OpenAI's answer to a request naming a model the server does not serve.
    static func modelNotFound(_ name: String) -> APIError {
        APIError(.notFound, "The model `\(name)` does not exist or you do not have access to it.", code: "model_not_found")
    }

    /// OpenAI's error type for a status.
    static func type(for code: Int) -> String {
        switch code {
        case 401: return "authentication_error"
        case 403: return "permission_error"
        case 429: return "rate_limit_error"
        case 500...: return "server_error"
        default: return "invalid_request_error"
        }
    }

    /// A 500 that tells the client nothing about the server (the details go to the log).
    static let internalError = APIError(.internalServerError, "the server failed to handle the request; the details are in its log")

    /// The error as a JSON body (for streams, which have already sent their status).
    var body: ErrorResponse { ErrorResponse(error: .init(message: message, type: type, code: code ?? String(status.code))) }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var response = JSONBody.response(body, status: status)
        response.headers.append(contentsOf: headers)
        return response
    }
}

/// Converts every error (including unmatched routes and framework errors) into a JSON
/// error response and counts it.
struct JSONErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    let metrics: ServerMetrics
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            let response = try await next(request, context)
            if response.status.code >= 400 { metrics.error(status: response.status.code) }
            return response
        } catch let error as APIError {
            metrics.error(status: error.status.code)
            return try error.response(from: request, context: context)
        } catch let error as HTTPResponseError {
            metrics.error(status: error.status.code)
            let message = error.status == .notFound ? "no route for \(request.method) \(request.uri.path)" : error.status.reasonPhrase
            return try APIError(error.status, message).response(from: request, context: context)
        } catch {
            metrics.error(status: 500)
            logger.error("\(request.method) \(request.uri.path) failed: \(error)")
            return try APIError.internalError.response(from: request, context: context)
        }
    }
}

/// JSON encoding helpers for responses.
enum JSONBody {
    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }()

    static func data<T: Encodable>(_ value: T) -> Data { (try? encoder.encode(value)) ?? Data("{}".utf8) }

    static func response<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"],
                 body: ResponseBody(byteBuffer: ByteBuffer(bytes: data(value))))
    }

    /// Decodes a request body, turning failures into 400s that say what is wrong.
    static func decode<T: Decodable>(_ type: T.Type, from request: inout Request, limit: Int) async throws -> T {
        let buffer: ByteBuffer
        do { buffer = try await request.collectBody(upTo: limit) } catch {
            throw APIError(.contentTooLarge, "the request body exceeds \(limit) bytes")
        }
        guard buffer.readableBytes > 0 else { throw APIError(.badRequest, "the request body is empty; expected JSON") }
        do {
            return try JSONDecoder().decode(T.self, from: Data(buffer.readableBytesView))
        } catch let DecodingError.keyNotFound(key, _) {
            throw APIError(.badRequest, "missing field '\(key.stringValue)'")
        } catch let DecodingError.typeMismatch(_, ctx) {
            throw APIError(.badRequest, "wrong type at '\(ctx.codingPath.map(\.stringValue).joined(separator: "."))': \(ctx.debugDescription)")
        } catch let DecodingError.valueNotFound(_, ctx) {
            throw APIError(.badRequest, "null at '\(ctx.codingPath.map(\.stringValue).joined(separator: "."))'")
        } catch let DecodingError.dataCorrupted(ctx) {
            let path = ctx.codingPath.map(\.stringValue).joined(separator: ".")
            throw APIError(.badRequest, path.isEmpty ? "the body is not valid JSON" : "invalid '\(path)': \(ctx.debugDescription)")
        } catch {
            throw APIError(.badRequest, "cannot decode the request: \(error)")
        }
    }
}
