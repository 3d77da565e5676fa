# Builds the worker binary into a small image.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/worker ./cmd/worker

FROM gcr.io/distroless/static-debian12
COPY --from=build /out/worker /worker
COPY --from=build /src/schema/examples /schema/examples
WORKDIR /
EXPOSE 9464
ENTRYPOINT ["/worker"]
CMD ["run"]
